// Runs containerd's snapshotter test suite (snapshots/testsuite) against lazyimage's snapshotter
// service, through containerd's own proxy client, exactly as containerd talks to a proxy plugin.
//
// Every case gets a fresh server: the factory starts
//
//	$LAZYIMAGE_PYTHON -m lazyimage.snapshotter --root ROOT --socket SOCK
//
// on the case's root directory and stops it (SIGTERM) in the case's cleanup. The suite mounts
// what the snapshotter returns, so it must run as root. Build with `go test -c`; run the binary
// with -test.v and LAZYIMAGE_PYTHON (and PYTHONPATH) set.
package suite

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	snapshotsapi "github.com/containerd/containerd/api/services/snapshots/v1"
	"github.com/containerd/containerd/snapshots"
	"github.com/containerd/containerd/snapshots/proxy"
	"github.com/containerd/containerd/snapshots/testsuite"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

const (
	// The name the snapshotter is registered under in containerd's config.
	snapshotterName = "lazyimage"
	startTimeout    = 30 * time.Second
	stopTimeout     = 15 * time.Second
)

// suiteName selects the suite's expectations. The suite skips renaming a lower directory for
// "overlayfs": overlayfs without redirect_dir cannot do it, and ours mounts overlayfs the way
// containerd's does.
const suiteName = "overlayfs"

func TestSnapshotterSuite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("the snapshotter suite mounts filesystems and needs root")
	}
	python := os.Getenv("LAZYIMAGE_PYTHON")
	if python == "" {
		t.Fatal("LAZYIMAGE_PYTHON must name a python that can import lazyimage")
	}
	testsuite.SnapshotterSuite(t, suiteName, func(ctx context.Context, root string) (snapshots.Snapshotter, func() error, error) {
		return startServer(ctx, python, root)
	})
}

// lockedBuffer collects a child's output; exec writes it from its own goroutine.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) tail(n int) string {
	b.mu.Lock()
	defer b.mu.Unlock()
	s := b.buf.String()
	if len(s) > n {
		s = "..." + s[len(s)-n:]
	}
	return s
}

func startServer(ctx context.Context, python, root string) (snapshots.Snapshotter, func() error, error) {
	// Beside the root, inside the case's temporary directory (removed after the case); unix
	// socket paths are limited to 107 bytes, and this one stays short.
	sock := filepath.Join(filepath.Dir(root), "snapshotter.sock")
	output := &lockedBuffer{}
	cmd := exec.Command(python, "-m", "lazyimage.snapshotter", "--root", root, "--socket", sock)
	cmd.Stdout = output
	cmd.Stderr = output
	if err := cmd.Start(); err != nil {
		return nil, nil, fmt.Errorf("starting %s: %w", python, err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()

	fail := func(err error) (snapshots.Snapshotter, func() error, error) {
		_ = cmd.Process.Kill()
		<-exited
		return nil, nil, fmt.Errorf("%w; server output:\n%s", err, output.tail(4000))
	}
	if err := waitForSocket(sock, exited); err != nil {
		return fail(err)
	}
	conn, err := grpc.DialContext(ctx, "unix://"+sock,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fail(fmt.Errorf("dialing %s: %w", sock, err))
	}
	sn := proxy.NewSnapshotter(snapshotsapi.NewSnapshotsClient(conn), snapshotterName)

	cleanup := func() error {
		closeErr := conn.Close()
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case err := <-exited:
			if err != nil {
				return fmt.Errorf("server exited with %v; output:\n%s", err, output.tail(4000))
			}
		case <-time.After(stopTimeout):
			_ = cmd.Process.Kill()
			<-exited
			return fmt.Errorf("server did not stop within %s; output:\n%s", stopTimeout, output.tail(4000))
		}
		return closeErr
	}
	return sn, cleanup, nil
}

// waitForSocket returns once something accepts connections on sock.
func waitForSocket(sock string, exited <-chan error) error {
	deadline := time.Now().Add(startTimeout)
	for time.Now().Before(deadline) {
		select {
		case err := <-exited:
			return fmt.Errorf("server exited before serving: %v", err)
		default:
		}
		if c, err := net.Dial("unix", sock); err == nil {
			return c.Close()
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("server did not listen on " + sock + " within " + startTimeout.String())
}
