// Package natstest runs a real NATS server with JetStream on loopback for
// tests that start processes which must reach it over the network, as a
// relay pod reaches the fleet's JetStream.
package natstest

import (
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Start runs nats-server in this process on 127.0.0.1 with a free port and
// its JetStream file store in a temporary directory, syncing every write
// before it acknowledges, as every JetStream mailfleet documents does. It
// returns the client URL; the server stops in t.Cleanup.
func Start(t testing.TB) string {
	t.Helper()
	return Run(t, &server.Options{
		ServerName: "natstest",
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		JetStream:  true,
		StoreDir:   t.TempDir(),
		SyncAlways: true,
		NoSigs:     true,
		NoLog:      true,
	}, 30*time.Second).ClientURL()
}

// Run runs a nats-server with opts in this process until the test ends,
// and fails the test unless it accepts connections within ready.
func Run(t testing.TB, opts *server.Options, ready time.Duration) *server.Server {
	t.Helper()
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	go srv.Start()
	t.Cleanup(func() {
		srv.Shutdown()
		srv.WaitForShutdown()
	})
	if !srv.ReadyForConnections(ready) {
		t.Fatalf("nats server did not start within %v", ready)
	}
	return srv
}
