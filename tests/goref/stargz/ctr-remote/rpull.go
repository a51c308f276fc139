package main

import (
	"errors"
	"fmt"

	"github.com/containerd/containerd/v2/client"
	"github.com/containerd/containerd/v2/cmd/ctr/commands"
	"github.com/containerd/stargz-snapshotter/fs/source"
	"github.com/urfave/cli/v2"
)

var rpullCommand = &cli.Command{
	Name:      "rpull",
	Usage:     "Pull an image lazily: layers are mounted by the remote snapshotter, not downloaded",
	ArgsUsage: "[flags] <ref>",
	Flags: append([]cli.Flag{
		&cli.StringFlag{Name: "snapshotter", Value: "stargz", Usage: "Name of the remote snapshotter"},
		&cli.Int64Flag{Name: "prefetch-size", Usage: "Prefetch size passed to the snapshotter for layers without a landmark"},
	}, commands.RegistryFlags...),
	Action: func(cliContext *cli.Context) error {
		ref := cliContext.Args().First()
		if ref == "" {
			return errors.New("an image reference must be given")
		}
		c, ctx, cancel, err := commands.NewClient(cliContext)
		if err != nil {
			return err
		}
		defer cancel()
		ctx, done, err := c.WithLease(ctx)
		if err != nil {
			return err
		}
		defer done(ctx)
		resolver, err := commands.GetResolver(ctx, cliContext)
		if err != nil {
			return err
		}
		// The wrapper adds the labels that tell the snapshotter where each layer lives.
		img, err := c.Pull(ctx, ref,
			client.WithResolver(resolver),
			client.WithPullUnpack,
			client.WithPullSnapshotter(cliContext.String("snapshotter")),
			client.WithImageHandlerWrapper(source.AppendDefaultLabelsHandlerWrapper(ref, cliContext.Int64("prefetch-size"))),
		)
		if err != nil {
			return err
		}
		fmt.Fprintf(cliContext.App.Writer, "%s %s\n", img.Name(), img.Target().Digest)
		return nil
	},
}
