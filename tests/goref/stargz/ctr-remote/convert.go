package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/cmd/ctr/commands"
	"github.com/containerd/containerd/v2/core/images/converter"
	"github.com/containerd/containerd/v2/core/images/converter/uncompress"
	"github.com/containerd/log"
	"github.com/containerd/platforms"
	"github.com/containerd/stargz-snapshotter/estargz"
	esgzconvert "github.com/containerd/stargz-snapshotter/nativeconverter/estargz"
	"github.com/urfave/cli/v2"
)

var convertCommand = &cli.Command{
	Name:      "convert",
	Usage:     "Convert an image, optionally into eStargz",
	ArgsUsage: "[flags] <source_ref> <target_ref>",
	Flags: []cli.Flag{
		&cli.BoolFlag{Name: "estargz", Usage: "Convert gzip/zstd/tar layers into eStargz"},
		&cli.IntFlag{Name: "estargz-compression-level", Value: 9, Usage: "eStargz gzip level (1-9)"},
		&cli.IntFlag{Name: "estargz-chunk-size", Usage: "eStargz chunk size in bytes (0: 4 MiB)"},
		&cli.IntFlag{Name: "estargz-min-chunk-size", Usage: "pack small files into gzip members of at least N bytes"},
		&cli.StringFlag{Name: "estargz-record-in", Usage: "JSON file with an array of files to prioritize, in access order"},
		&cli.BoolFlag{Name: "uncompress", Usage: "Convert tar.gz layers to uncompressed tar layers"},
		&cli.BoolFlag{Name: "oci", Usage: "Convert Docker media types to OCI media types"},
		&cli.StringSliceFlag{Name: "platform", Usage: "Convert content of these platforms"},
		&cli.BoolFlag{Name: "all-platforms", Usage: "Convert content of all platforms"},
	},
	Action: func(cliContext *cli.Context) error {
		srcRef, dstRef := cliContext.Args().Get(0), cliContext.Args().Get(1)
		if srcRef == "" || dstRef == "" {
			return errors.New("source and target image need to be specified")
		}
		var opts []converter.Opt
		if !cliContext.Bool("all-platforms") {
			if pss := cliContext.StringSlice("platform"); len(pss) > 0 {
				all, err := platforms.ParseAll(pss)
				if err != nil {
					return err
				}
				opts = append(opts, converter.WithPlatform(platforms.Ordered(all...)))
			} else {
				opts = append(opts, converter.WithPlatform(platforms.DefaultStrict()))
			}
		}
		switch {
		case cliContext.Bool("estargz"):
			esgzOpts := []estargz.Option{
				estargz.WithCompressionLevel(cliContext.Int("estargz-compression-level")),
				estargz.WithChunkSize(cliContext.Int("estargz-chunk-size")),
				estargz.WithMinChunkSize(cliContext.Int("estargz-min-chunk-size")),
			}
			if path := cliContext.String("estargz-record-in"); path != "" {
				files, err := readFileList(path)
				if err != nil {
					return err
				}
				// Files missing from a layer are expected: each layer holds only some of them.
				var missing []string
				esgzOpts = append(esgzOpts, estargz.WithPrioritizedFiles(files),
					estargz.WithAllowPrioritizeNotFound(&missing))
			}
			if !cliContext.Bool("oci") {
				log.L.Warn("--estargz without --oci: Docker media types cannot carry the TOC digest annotation")
			}
			opts = append(opts, converter.WithLayerConvertFunc(esgzconvert.LayerConvertFunc(esgzOpts...)))
		case cliContext.Bool("uncompress"):
			opts = append(opts, converter.WithLayerConvertFunc(uncompress.LayerConvertFunc))
		}
		if cliContext.Bool("oci") {
			opts = append(opts, converter.WithDockerToOCI(true))
		}

		client, ctx, cancel, err := commands.NewClient(cliContext)
		if err != nil {
			return err
		}
		defer cancel()
		img, err := converter.Convert(ctx, client, dstRef, srcRef, opts...)
		if err != nil {
			return err
		}
		fmt.Fprintln(cliContext.App.Writer, img.Target.Digest.String())
		return nil
	},
}

func readFileList(path string) ([]string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var files []string
	if err := json.Unmarshal(data, &files); err != nil {
		return nil, fmt.Errorf("%s: want a JSON array of paths: %w", path, err)
	}
	return files, nil
}
