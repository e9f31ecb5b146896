package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"syscall"
	"time"

	"github.com/mailfleet/mailfleet/relay/certs"
)

// harakaBin is where hack/install-bench-deps.sh installs Haraka with npm.
const harakaBin = "bin/haraka/node_modules/.bin/haraka"

// harakaPlugin accepts every recipient and discards every message once
// DATA is read: the cost of the SMTP engine alone.
const harakaPlugin = `exports.hook_rcpt = (next) => next(OK)
exports.hook_queue = (next) => next(OK)
`

// haraka runs Haraka 3 with one process per core (nodes=cpus), its
// shipped log level, and the accept-and-discard plugin; with auth it offers
// STARTTLS and AUTH PLAIN/LOGIN from a flat file and the loader logs in.
func (l *lab) haraka(auth bool) (*server, error) {
	name := "haraka"
	if auth {
		name = "haraka-auth"
	}
	bin, err := filepath.Abs(harakaBin)
	if err != nil {
		return nil, err
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("Haraka is not installed: run hack/install-bench-deps.sh (%w)", err)
	}
	dir := filepath.Join(l.dir, name)
	if out, err := exec.Command(bin, "-i", dir).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("haraka -i: %v\n%s", err, out)
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	plugins := "accept_all\n"
	srv := &server{name: name, addr: addr}
	files := map[string]string{
		"config/smtp.ini":           fmt.Sprintf("listen=%s\nnodes=%d\n", addr, runtime.NumCPU()),
		"plugins/accept_all.js":     harakaPlugin,
		"config/me":                 "haraka.bench.test\n",
		"config/auth_flat_file.ini": "[core]\nmethods=PLAIN,LOGIN\nconstrain_sender=false\n[users]\nbench=bench-password\n",
	}
	// Haraka's core loads config/tls_*.pem whether or not the tls plugin
	// runs; a worker without them exits.
	tls, err := certs.EnsureSelfSigned(filepath.Join(dir, "tls"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		return nil, err
	}
	for src, dst := range map[string]string{tls.CertFile: "config/tls_cert.pem", tls.KeyFile: "config/tls_key.pem"} {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, err
		}
		files[dst] = string(b)
	}
	if auth {
		if srv.roots, err = certPool(tls.CAFile); err != nil {
			return nil, err
		}
		plugins = "tls\nauth/flat_file\n" + plugins
		srv.starttls, srv.auth, srv.user, srv.pass = true, true, "bench", "bench-password"
	}
	files["config/plugins"] = plugins
	for f, content := range files {
		if err := os.WriteFile(filepath.Join(dir, f), []byte(content), 0o644); err != nil {
			return nil, err
		}
	}
	cmd, stop, err := l.start(name, bin, "-c", dir)
	if err != nil {
		return nil, err
	}
	if err := waitListening(addr, 60*time.Second); err != nil {
		return nil, fmt.Errorf("%w\n%s", err, l.logTail(name))
	}
	srv.stop, srv.relayPID = stop, cmd.Process.Pid
	srv.pids = func() []int { return []int{cmd.Process.Pid} }
	srv.pause = func(stop bool) {
		sig := syscall.SIGCONT
		if stop {
			sig = syscall.SIGSTOP
		}
		syscall.Kill(-cmd.Process.Pid, sig)
	}
	return srv, nil
}
