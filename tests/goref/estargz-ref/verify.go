package main

import (
	"crypto/sha256"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/containerd/stargz-snapshotter/estargz"
	digest "github.com/opencontainers/go-digest"
)

type verifyResult struct {
	TOCDigest          string     `json:"tocDigest"`
	Entries            []entryOut `json:"entries"`
	PrefetchLandmark   bool       `json:"prefetchLandmark"`
	NoPrefetchLandmark bool       `json:"noPrefetchLandmark"`
	LandmarkOffset     *int64     `json:"landmarkOffset,omitempty"`
}

// entryOut is one file of the layer as the reference reader sees it.
// Chunk entries are folded into their file.
type entryOut struct {
	Name      string            `json:"name"`
	Type      string            `json:"type"`
	Size      int64             `json:"size"`
	Mode      int64             `json:"mode"`
	UID       int               `json:"uid"`
	GID       int               `json:"gid"`
	UserName  string            `json:"userName"`
	GroupName string            `json:"groupName"`
	ModTime   string            `json:"modtime"`
	LinkName  string            `json:"linkName"`
	DevMajor  int               `json:"devMajor"`
	DevMinor  int               `json:"devMinor"`
	Xattrs    map[string][]byte `json:"xattrs"`
	Digest    string            `json:"digest,omitempty"` // sha256 of the content read, reg only
	Chunks    int               `json:"chunks,omitempty"` // verified chunks, reg only
	NumLink   int               `json:"numLink"`
}

// runVerify opens a blob with estargz.Open, verifies its TOC and reads every
// regular file through the reader, checking each chunk against its digest.
func runVerify(args []string) (any, error) {
	fs := flag.NewFlagSet("verify", flag.ContinueOnError)
	want := fs.String("toc-digest", "", "expected digest of the TOC JSON (sha256:...)")
	if err := fs.Parse(args); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() != 1 {
		return nil, fmt.Errorf("%w: want one BLOB argument", errUsage)
	}
	sr, f, err := openBlob(fs.Arg(0))
	if err != nil {
		return nil, err
	}
	defer f.Close()

	r, err := estargz.Open(sr)
	if err != nil {
		return nil, fmt.Errorf("open: %w", err)
	}
	var verifier estargz.TOCEntryVerifier
	if *want != "" {
		d, err := digest.Parse(*want)
		if err != nil {
			return nil, fmt.Errorf("%w: --toc-digest: %v", errUsage, err)
		}
		verifier, err = r.VerifyTOC(d)
		if err != nil {
			return nil, fmt.Errorf("verify TOC: %w", err)
		}
	} else {
		verifier, err = r.Verifiers()
		if err != nil {
			return nil, fmt.Errorf("verifiers: %w", err)
		}
	}

	// The Reader does not expose the TOC order, so the TOC is also decoded on
	// its own with the library's footer and TOC parsers.
	toc, err := readTOC(sr, r.TOCDigest())
	if err != nil {
		return nil, err
	}

	res := verifyResult{TOCDigest: r.TOCDigest().String(), Entries: []entryOut{}}
	for _, e := range toc.Entries {
		if e.Type == "chunk" {
			continue
		}
		ent, ok := r.Lookup(e.Name)
		if !ok {
			return nil, fmt.Errorf("%q is in the TOC but the reader cannot look it up", e.Name)
		}
		out := entryOut{
			Name:      e.Name,
			Type:      e.Type,
			Size:      e.Size,
			Mode:      e.Mode,
			UID:       e.UID,
			GID:       e.GID,
			UserName:  ent.Uname,
			GroupName: ent.Gname,
			ModTime:   e.ModTime3339,
			LinkName:  e.LinkName,
			DevMajor:  e.DevMajor,
			DevMinor:  e.DevMinor,
			Xattrs:    e.Xattrs,
			NumLink:   ent.NumLink,
		}
		if out.Xattrs == nil {
			out.Xattrs = map[string][]byte{}
		}
		if e.Type == "reg" {
			out.Digest, out.Chunks, err = readVerified(r, verifier, e.Name, e.Size)
			if err != nil {
				return nil, err
			}
		}
		switch cleanName(e.Name) {
		case estargz.PrefetchLandmark:
			res.PrefetchLandmark = true
			res.LandmarkOffset = &e.Offset
		case estargz.NoPrefetchLandmark:
			res.NoPrefetchLandmark = true
			if res.LandmarkOffset == nil {
				res.LandmarkOffset = &e.Offset
			}
		}
		res.Entries = append(res.Entries, out)
	}
	return res, nil
}

// readTOC decodes the TOC in blob order and checks it is the one Open read.
func readTOC(sr *io.SectionReader, want digest.Digest) (*estargz.JTOC, error) {
	tocOffset, footerSize, err := estargz.OpenFooter(sr)
	if err != nil {
		return nil, fmt.Errorf("footer: %w", err)
	}
	tocSize := sr.Size() - tocOffset - footerSize
	if tocOffset < 0 || tocSize <= 0 {
		return nil, fmt.Errorf("footer points outside the blob (TOC offset %d)", tocOffset)
	}
	// Both gzip decompressors (51- and 47-byte footer) decode the TOC the same way.
	toc, got, err := new(estargz.GzipDecompressor).ParseTOC(io.NewSectionReader(sr, tocOffset, tocSize))
	if err != nil {
		return nil, fmt.Errorf("TOC: %w", err)
	}
	if got != want {
		return nil, fmt.Errorf("TOC digest %s differs from the reader's %s", got, want)
	}
	return toc, nil
}

// readVerified reads a regular file chunk by chunk through the reader and
// checks each chunk with the verifier. It returns the sha256 of the whole
// content and the number of chunks.
func readVerified(r *estargz.Reader, v estargz.TOCEntryVerifier, name string, size int64) (string, int, error) {
	file, err := r.OpenFile(name)
	if err != nil {
		return "", 0, fmt.Errorf("open %q: %w", name, err)
	}
	whole := sha256.New()
	chunks := 0
	for off := int64(0); off < size; {
		ce, ok := r.ChunkEntryForOffset(name, off)
		if !ok || ce.ChunkOffset != off || ce.ChunkSize <= 0 {
			return "", 0, fmt.Errorf("%q: no chunk starts at offset %d", name, off)
		}
		cv, err := v.Verifier(ce)
		if err != nil {
			return "", 0, fmt.Errorf("%q: chunk at %d: %w", name, off, err)
		}
		// One ReadAt per chunk: each ReadAt decompresses from the chunk's start.
		buf := make([]byte, ce.ChunkSize)
		if n, err := file.ReadAt(buf, off); int64(n) != ce.ChunkSize {
			return "", 0, fmt.Errorf("%q: reading chunk at %d: got %d of %d bytes: %v", name, off, n, ce.ChunkSize, err)
		}
		cv.Write(buf)
		if !cv.Verified() {
			return "", 0, fmt.Errorf("%q: chunk at %d (%d bytes) does not match its digest", name, off, ce.ChunkSize)
		}
		whole.Write(buf)
		off += ce.ChunkSize
		chunks++
	}
	return "sha256:" + hex.EncodeToString(whole.Sum(nil)), chunks, nil
}

// cleanName normalizes a TOC name the way the library does.
func cleanName(name string) string {
	return strings.TrimPrefix(path.Clean("/"+name), "/")
}
