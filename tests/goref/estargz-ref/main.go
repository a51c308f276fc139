// Command estargz-ref runs the reference eStargz library
// (github.com/containerd/stargz-snapshotter/estargz) on files, so that the
// Python implementation can be checked against it in both directions.
//
//	estargz-ref verify [--toc-digest sha256:...] BLOB
//	estargz-ref build [--chunk-size N] [--min-chunk-size N] [--prioritized a,b,c]
//	                  [--level N] [--parallelism N] IN OUT
//	estargz-ref legacy-build [same flags as build] IN OUT
//	estargz-ref footer BLOB
//	estargz-ref version
//
// Results are printed as one JSON object on stdout. Errors go to stderr and
// the exit status is non-zero (1 for a failed check, 2 for bad usage).
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
)

// errUsage marks command-line mistakes, which exit with status 2.
var errUsage = errors.New("usage")

const usage = `usage:
  estargz-ref verify [--toc-digest sha256:...] BLOB
  estargz-ref build [--chunk-size N] [--min-chunk-size N] [--prioritized a,b,c] [--level N] [--parallelism N] IN OUT
  estargz-ref legacy-build [build flags] IN OUT
  estargz-ref footer BLOB
  estargz-ref version`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, usage)
		os.Exit(2)
	}
	commands := map[string]func([]string) (any, error){
		"verify":       runVerify,
		"build":        func(args []string) (any, error) { return runBuild("build", args, false) },
		"legacy-build": func(args []string) (any, error) { return runBuild("legacy-build", args, true) },
		"footer":       runFooter,
		"version":      runVersion,
	}
	name := os.Args[1]
	run, ok := commands[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "estargz-ref: unknown command %q\n%s\n", name, usage)
		os.Exit(2)
	}
	result, err := run(os.Args[2:])
	if err != nil {
		fmt.Fprintf(os.Stderr, "estargz-ref %s: %v\n", name, err)
		if errors.Is(err, errUsage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(result); err != nil {
		fmt.Fprintf(os.Stderr, "estargz-ref %s: writing result: %v\n", name, err)
		os.Exit(1)
	}
}

// openBlob opens a file as the io.SectionReader that the library reads from.
func openBlob(path string) (*io.SectionReader, *os.File, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return nil, nil, err
	}
	return io.NewSectionReader(f, 0, st.Size()), f, nil
}

// runVersion reports the estargz module version this binary was built with.
func runVersion(args []string) (any, error) {
	if len(args) != 0 {
		return nil, fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	res := map[string]string{"go": runtime.Version(), "estargz": "unknown"}
	if info, ok := debug.ReadBuildInfo(); ok {
		for _, dep := range info.Deps {
			if dep.Path == "github.com/containerd/stargz-snapshotter/estargz" {
				res["estargz"] = dep.Version
			}
		}
	}
	return res, nil
}
