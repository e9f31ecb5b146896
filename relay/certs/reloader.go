// Package certs serves the relay's TLS certificate and replaces it when the
// files on disk change, so a renewed certificate (cert-manager, certbot, an
// operator by hand) takes effect without restarting the relay or dropping
// connections in flight. It also creates self-signed certificates for dev
// mode and tests.
package certs

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/fsnotify/fsnotify"
)

// DefaultPollInterval is how often Run rereads the files when PollInterval is
// zero. Polling backs up fsnotify, which can miss events (overflowed queues,
// network filesystems, a watched directory replaced wholesale).
const DefaultPollInterval = 2 * time.Second

// settleDelay coalesces the burst of events one update produces (truncate,
// write, chmod, rename) into one reload attempt, so a writer that is still
// busy is not reported as a broken pair on every event.
const settleDelay = 100 * time.Millisecond

// Reloader holds the current certificate and key pair loaded from two PEM
// files and replaces it when they change. Handshakes read it lock-free, and a
// handshake that has finished keeps the certificate it was given: a reload
// only affects handshakes that start after it. Create one with NewReloader.
type Reloader struct {
	// PollInterval is how often Run rereads the files even without an
	// fsnotify event; zero means DefaultPollInterval. Set it before Run.
	PollInterval time.Duration

	certFile, keyFile string
	log               *slog.Logger

	// pollOnly lets tests prove the poll fallback on its own.
	pollOnly bool

	current atomic.Pointer[loadedPair]

	// mu serialises reloads; lastErr keeps a pair that stays broken from
	// logging the same warning on every poll.
	mu      sync.Mutex
	lastErr string
}

// loadedPair keeps the generation and content hash beside the certificate
// so a reader never sees one without the other.
type loadedPair struct {
	cert       *tls.Certificate
	hash       [sha256.Size]byte
	generation uint64
}

// NewReloader loads the pair from certFile and keyFile, failing if either
// cannot be read or parsed or if the key does not belong to the certificate.
// A nil log means slog.Default().
func NewReloader(certFile, keyFile string, log *slog.Logger) (*Reloader, error) {
	if log == nil {
		log = slog.Default()
	}
	r := &Reloader{certFile: certFile, keyFile: keyFile, log: log}
	cert, hash, err := r.read()
	if err != nil {
		return nil, err
	}
	r.install(cert, hash)
	return r, nil
}

// GetCertificate returns the current certificate. It has the signature of
// tls.Config.GetCertificate.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	return r.current.Load().cert, nil
}

// Generation counts successful loads, starting at 1 for the pair loaded by
// NewReloader.
func (r *Reloader) Generation() uint64 {
	return r.current.Load().generation
}

// Leaf returns the parsed leaf certificate of the current pair.
func (r *Reloader) Leaf() *x509.Certificate {
	return r.current.Load().cert.Leaf
}

// Run watches the files until ctx is done, then returns nil. It watches the
// directories rather than the files because the usual ways of replacing a
// certificate (a Kubernetes Secret volume swapping its ..data symlink, an
// editor or certbot renaming a new file into place) replace the directory
// entry, and a watch on the old file would never fire again. If fsnotify
// cannot start (a node out of inotify instances is common), Run logs a
// warning and polls only, rather than failing the relay over a convenience.
// Run must be called at most once.
func (r *Reloader) Run(ctx context.Context) error {
	var events <-chan fsnotify.Event
	var errs <-chan error
	if !r.pollOnly {
		w, err := r.watch()
		if err != nil {
			r.log.Warn("TLS certificate watch failed; polling only", "error", err)
		} else {
			defer w.Close()
			events, errs = w.Events, w.Errors
		}
	}
	interval := r.PollInterval
	if interval <= 0 {
		interval = DefaultPollInterval
	}
	// Changes made between NewReloader and the watch starting raise no event.
	r.reload()
	r.log.Debug("TLS certificate watch started",
		"cert_file", r.certFile, "key_file", r.keyFile,
		"fsnotify", events != nil, "poll_interval", interval)
	r.loop(ctx, events, errs, interval)
	return nil
}

// loop reloads after each burst of events and on every poll tick. A nil
// channel is never ready, which is how polling-only runs.
func (r *Reloader) loop(ctx context.Context, events <-chan fsnotify.Event, errs <-chan error, interval time.Duration) {
	poll := time.NewTicker(interval)
	defer poll.Stop()
	settle := time.NewTimer(settleDelay)
	settle.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-events:
			if !ok {
				events = nil
			} else if ev.Op != fsnotify.Chmod {
				settle.Reset(settleDelay)
			}
		case err, ok := <-errs:
			if !ok {
				errs = nil
			} else {
				// Usually a queue overflow: events were lost, so look now.
				r.log.Warn("TLS certificate watch error", "error", err)
				settle.Reset(settleDelay)
			}
		case <-settle.C:
			r.reload()
		case <-poll.C:
			r.reload()
		}
	}
}

// watch starts fsnotify on the directories of both files.
func (r *Reloader) watch() (*fsnotify.Watcher, error) {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("watch TLS certificate files: %w", err)
	}
	for _, dir := range uniqueDirs(r.certFile, r.keyFile) {
		if err := w.Add(dir); err != nil {
			w.Close()
			return nil, fmt.Errorf("watch TLS certificate directory %s: %w", dir, err)
		}
	}
	return w, nil
}

func uniqueDirs(files ...string) []string {
	var dirs []string
	seen := map[string]bool{}
	for _, f := range files {
		d := filepath.Dir(f)
		if !seen[d] {
			seen[d] = true
			dirs = append(dirs, d)
		}
	}
	return dirs
}

// reload installs the pair on disk if it differs from the current one and is
// valid. A broken pair is usually an update caught halfway (certificate
// written, key not yet), so the old pair stays in service and the next event
// or poll tries again.
func (r *Reloader) reload() {
	r.mu.Lock()
	defer r.mu.Unlock()

	cert, hash, err := r.read()
	if err != nil {
		if msg := err.Error(); msg != r.lastErr {
			r.lastErr = msg
			r.log.Warn("TLS certificate not reloaded; keeping the previous one",
				"error", err, "serial", r.Leaf().SerialNumber.Text(16))
		}
		return
	}
	r.lastErr = ""
	if hash == r.current.Load().hash {
		return
	}
	r.install(cert, hash)
}

// read loads the pair from the files' bytes rather than with
// tls.LoadX509KeyPair so the hash that decides "changed" is of exactly the
// bytes that were parsed.
func (r *Reloader) read() (*tls.Certificate, [sha256.Size]byte, error) {
	var hash [sha256.Size]byte
	certPEM, err := os.ReadFile(r.certFile)
	if err != nil {
		return nil, hash, fmt.Errorf("load TLS certificate: %w", err)
	}
	keyPEM, err := os.ReadFile(r.keyFile)
	if err != nil {
		return nil, hash, fmt.Errorf("load TLS key: %w", err)
	}
	hash = sha256.Sum256(bytes.Join([][]byte{certPEM, keyPEM}, []byte{0}))
	if current := r.current.Load(); current != nil && current.hash == hash {
		return current.cert, hash, nil
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err == nil && cert.Leaf == nil {
		// Only nil under GODEBUG x509keypairleaf=0.
		cert.Leaf, err = x509.ParseCertificate(cert.Certificate[0])
	}
	if err != nil {
		return nil, hash, fmt.Errorf("load TLS key pair %s and %s: %w", r.certFile, r.keyFile, err)
	}
	return &cert, hash, nil
}

func (r *Reloader) install(cert *tls.Certificate, hash [sha256.Size]byte) {
	next := &loadedPair{cert: cert, hash: hash, generation: 1}
	if prev := r.current.Load(); prev != nil {
		next.generation = prev.generation + 1
	}
	r.current.Store(next)
	leaf := cert.Leaf
	r.log.Info("TLS certificate loaded",
		"generation", next.generation,
		"cert_file", r.certFile,
		"serial", leaf.SerialNumber.Text(16),
		"subject_cn", leaf.Subject.CommonName,
		"dns_names", leaf.DNSNames,
		"ip_addresses", leaf.IPAddresses,
		"issuer_cn", leaf.Issuer.CommonName,
		"not_after", leaf.NotAfter)
}

// ServerTLSConfig returns the relay's server TLS configuration, taking the
// certificate from get (usually Reloader.GetCertificate) on every handshake.
//
// MinVersion is TLS 1.2 because RFC 8996 deprecates TLS 1.0 and 1.1. There
// is no explicit cipher list because Go's default for TLS 1.2 is already
// limited to forward-secret ECDHE suites: since Go 1.22/1.23 it drops RSA key
// exchange and 3DES, and it never enables RC4 or CBC-SHA256 unless listed
// explicitly. It is not AEAD-only: ECDHE with AES-CBC-SHA1 stays enabled for
// old clients, but the server picks from its own preference order, which puts
// every AES-GCM and ChaCha20-Poly1305 suite first, so a client offering any
// AEAD suite gets one. TLS 1.3 suites are not configurable and all AEAD.
// Leaving the list nil also picks up future tightening of Go's defaults.
func ServerTLSConfig(get func(*tls.ClientHelloInfo) (*tls.Certificate, error)) *tls.Config {
	return &tls.Config{
		MinVersion:     tls.VersionTLS12,
		GetCertificate: get,
	}
}
