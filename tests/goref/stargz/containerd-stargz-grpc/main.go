// Command containerd-stargz-grpc serves the reference stargz snapshotter
// (github.com/containerd/stargz-snapshotter/service) as a containerd proxy
// snapshotter on a unix socket. It takes the upstream daemon's main flags
// and the service.Config part of its TOML configuration file.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/v2/contrib/snapshotservice"
	"github.com/containerd/log"
	"github.com/containerd/stargz-snapshotter/service"
	"github.com/containerd/stargz-snapshotter/service/keychain/dockerconfig"
	"github.com/containerd/stargz-snapshotter/version"
	metrics "github.com/docker/go-metrics"
	"github.com/pelletier/go-toml/v2"
	"google.golang.org/grpc"
)

// config is the TOML file: the snapshotter's own options plus where to
// serve Prometheus metrics.
type config struct {
	service.Config
	MetricsAddress string `toml:"metrics_address"`
}

func main() {
	address := flag.String("address", "/run/containerd-stargz-grpc/containerd-stargz-grpc.sock", "unix socket for the snapshotter's gRPC server")
	configPath := flag.String("config", "/etc/containerd-stargz-grpc/config.toml", "TOML configuration file (ignored if absent)")
	logLevel := flag.String("log-level", "info", "log level [trace, debug, info, warn, error, fatal, panic]")
	rootDir := flag.String("root", "/var/lib/containerd-stargz-grpc", "root directory of the snapshotter's state")
	printVersion := flag.Bool("version", false, "print the version and exit")
	flag.Parse()
	if *printVersion {
		fmt.Println("containerd-stargz-grpc", version.Version)
		return
	}
	if err := run(*address, *configPath, *logLevel, *rootDir); err != nil {
		fmt.Fprintln(os.Stderr, "containerd-stargz-grpc:", err)
		os.Exit(1)
	}
}

func run(address, configPath, logLevel, rootDir string) error {
	if err := log.SetLevel(logLevel); err != nil {
		return err
	}
	ctx := log.WithLogger(context.Background(), log.L)

	var cfg config
	if data, err := os.ReadFile(configPath); err == nil {
		if err := toml.Unmarshal(data, &cfg); err != nil {
			return fmt.Errorf("config %s: %w", configPath, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}

	// Registry credentials come from the docker config file, as with ctr-remote.
	sn, err := service.NewStargzSnapshotterService(ctx, rootDir, &cfg.Config,
		service.WithCredsFuncs(dockerconfig.NewDockerconfigKeychain(ctx)))
	if err != nil {
		return err
	}
	defer sn.Close()

	if cfg.MetricsAddress != "" {
		ml, err := net.Listen("tcp", cfg.MetricsAddress)
		if err != nil {
			return err
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics.Handler())
		go http.Serve(ml, mux)
	}

	rpc := grpc.NewServer()
	snapshotsapi.RegisterSnapshotsServer(rpc, snapshotservice.FromSnapshotter(sn))
	if err := os.MkdirAll(filepath.Dir(address), 0o700); err != nil {
		return err
	}
	if err := os.Remove(address); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	l, err := net.Listen("unix", address)
	if err != nil {
		return err
	}
	served := make(chan error, 1)
	go func() { served <- rpc.Serve(l) }()
	log.G(ctx).WithField("address", address).Info("serving")

	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	select {
	case sig := <-stop:
		log.G(ctx).WithField("signal", sig).Info("stopping")
		rpc.GracefulStop()
		return nil
	case err := <-served:
		return err
	}
}
