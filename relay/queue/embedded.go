package queue

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// startEmbedded runs nats-server in this process with JetStream's file store
// under dir. It listens on no port at all: the relay connects in-process, so
// nothing outside the process can reach the queue. Every write is synced
// before JetStream acknowledges it (sync_interval: always). A
// lock file keeps a second process from opening the same store.
func startEmbedded(dir string) (*server.Server, func() error, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create queue directory: %w", err)
	}
	unlock, err := lockDir(filepath.Join(dir, "LOCK"))
	if err != nil {
		return nil, nil, err
	}
	opts := &server.Options{
		ServerName: "mailfleet-embedded",
		DontListen: true,
		JetStream:  true,
		StoreDir:   dir,
		SyncAlways: true,
		NoSigs:     true,
		NoLog:      true,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		unlock()
		return nil, nil, fmt.Errorf("embedded NATS server: %w", err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(30 * time.Second) {
		srv.Shutdown()
		srv.WaitForShutdown()
		unlock()
		return nil, nil, fmt.Errorf("embedded NATS server in %s did not start within 30s", dir)
	}
	return srv, unlock, nil
}
