// Command ctr-remote is containerd's ctr with two image commands backed by
// the reference stargz-snapshotter library:
//
//	ctr-remote images convert --estargz --oci SRC DST   (nativeconverter/estargz)
//	ctr-remote images rpull [--snapshotter stargz] REF  (lazy pull through the remote snapshotter)
//
// Everything else is plain ctr.
package main

import (
	"fmt"
	"os"

	"github.com/containerd/containerd/v2/cmd/ctr/app"
	"github.com/containerd/stargz-snapshotter/version"
	"github.com/urfave/cli/v2"
)

func main() {
	a := app.New()
	a.Name = "ctr-remote"
	a.Version = version.Version
	for _, cmd := range a.Commands {
		if cmd.Name == "images" {
			cmd.Subcommands = withCommands(cmd.Subcommands, convertCommand, rpullCommand)
		}
	}
	if err := a.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "ctr-remote:", err)
		os.Exit(1)
	}
}

// withCommands replaces the commands of the same name in cmds, or appends.
func withCommands(cmds []*cli.Command, add ...*cli.Command) []*cli.Command {
	for _, c := range add {
		replaced := false
		for i := range cmds {
			if cmds[i].Name == c.Name {
				cmds[i], replaced = c, true
			}
		}
		if !replaced {
			cmds = append(cmds, c)
		}
	}
	return cmds
}
