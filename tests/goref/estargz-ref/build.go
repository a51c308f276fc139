package main

import (
	"bytes"
	"compress/gzip"
	"flag"
	"fmt"
	"hash"
	"io"
	"os"
	"runtime"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

type buildResult struct {
	TOCDigest        string `json:"tocDigest"`
	DiffID           string `json:"diffID"`
	Size             int64  `json:"size"`
	UncompressedSize int64  `json:"uncompressedSize"`
}

// listFlag collects comma-separated values; the flag may be repeated.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// runBuild converts a tar (plain, gzip or zstd) into an eStargz blob with
// estargz.Build. With legacy set, the blob ends in the 47-byte stargz footer.
func runBuild(name string, args []string, legacy bool) (any, error) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	chunkSize := fs.Int("chunk-size", 0, "chunk size in bytes (0: library default, 4 MiB)")
	minChunkSize := fs.Int("min-chunk-size", 0, "pack small files into gzip members of at least N bytes")
	level := fs.Int("level", gzip.BestCompression, "gzip compression level")
	parallelism := fs.Int("parallelism", 0, "GOMAXPROCS while building, which sets the number of parts (0: default)")
	var prioritized listFlag
	fs.Var(&prioritized, "prioritized", "comma-separated prioritized files, in access order (repeatable)")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 2 {
		return nil, fmt.Errorf("%w: want IN and OUT arguments", errUsage)
	}
	if *parallelism > 0 {
		// estargz.Build splits its input into runtime.GOMAXPROCS(0) parts.
		runtime.GOMAXPROCS(*parallelism)
	}

	in, inFile, err := openBlob(fs.Arg(0))
	if err != nil {
		return nil, err
	}
	defer inFile.Close()

	opts := []estargz.Option{
		estargz.WithChunkSize(*chunkSize),
		estargz.WithMinChunkSize(*minChunkSize),
		estargz.WithCompressionLevel(*level),
	}
	if len(prioritized) > 0 {
		opts = append(opts, estargz.WithPrioritizedFiles(prioritized))
	}
	if legacy {
		opts = append(opts, estargz.WithCompression(legacyGzip{
			estargz.NewGzipCompressorWithLevel(*level),
			new(estargz.LegacyGzipDecompressor),
		}))
	}
	blob, err := estargz.Build(in, opts...)
	if err != nil {
		return nil, fmt.Errorf("estargz.Build: %w", err)
	}
	out, err := os.Create(fs.Arg(1))
	if err != nil {
		blob.Close()
		return nil, err
	}
	size, copyErr := io.Copy(out, blob)
	closeErr := blob.Close()
	if err := out.Close(); copyErr == nil {
		copyErr = err
	}
	if copyErr != nil {
		return nil, fmt.Errorf("writing %s: %w", fs.Arg(1), copyErr)
	}
	if closeErr != nil {
		return nil, closeErr
	}
	usize, err := blob.UncompressedSize()
	if err != nil {
		return nil, err
	}
	return buildResult{
		TOCDigest:        blob.TOCDigest().String(),
		DiffID:           blob.DiffID().String(),
		Size:             size,
		UncompressedSize: usize,
	}, nil
}

// legacyGzip is the library's gzip compression, except that the blob ends in
// the legacy 47-byte stargz footer. The library reads that footer
// (LegacyGzipDecompressor) but has no writer for it.
type legacyGzip struct {
	*estargz.GzipCompressor
	*estargz.LegacyGzipDecompressor
}

func (c legacyGzip) WriteTOCAndFooter(w io.Writer, off int64, toc *estargz.JTOC, diffHash hash.Hash) (digest.Digest, error) {
	var buf bytes.Buffer
	d, err := c.GzipCompressor.WriteTOCAndFooter(&buf, off, toc, diffHash)
	if err != nil {
		return "", err
	}
	footer, err := legacyFooter(off)
	if err != nil {
		return "", err
	}
	tocMember := buf.Bytes()[:buf.Len()-estargz.FooterSize]
	if _, err := w.Write(tocMember); err != nil {
		return "", err
	}
	if _, err := w.Write(footer); err != nil {
		return "", err
	}
	return d, nil
}

// legacyFooter is an empty gzip member whose whole Extra field is
// "%016xSTARGZ" (no RFC 1952 subfield header), checked with the library's parser.
func legacyFooter(tocOffset int64) ([]byte, error) {
	var buf bytes.Buffer
	zw, err := gzip.NewWriterLevel(&buf, gzip.NoCompression)
	if err != nil {
		return nil, err
	}
	zw.Extra = []byte(fmt.Sprintf("%016xSTARGZ", tocOffset))
	if err := zw.Close(); err != nil {
		return nil, err
	}
	p := buf.Bytes()
	if _, got, _, err := new(estargz.LegacyGzipDecompressor).ParseFooter(p); err != nil || got != tocOffset {
		return nil, fmt.Errorf("legacy footer (%d bytes) does not parse back: offset %d, %v", len(p), got, err)
	}
	return p, nil
}

// runFooter reports the TOC offset and footer size found by estargz.OpenFooter,
// which tries the 51-byte eStargz footer and then the 47-byte legacy one.
func runFooter(args []string) (any, error) {
	if len(args) != 1 || strings.HasPrefix(args[0], "-") {
		return nil, fmt.Errorf("%w: want one BLOB argument", errUsage)
	}
	sr, f, err := openBlob(args[0])
	if err != nil {
		return nil, err
	}
	defer f.Close()
	tocOffset, footerSize, err := estargz.OpenFooter(sr)
	if err != nil {
		return nil, err
	}
	return map[string]int64{"tocOffset": tocOffset, "footerSize": footerSize}, nil
}
