package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mailfleet/mailfleet/relay/certs"
)

// postfixMaster is a master.cf with every service out of chroot (the
// instance lives in a temporary directory) and smtpd on the test's port.
const postfixMaster = `%s inet n - n - - smtpd
pickup    unix  n - n 60 1 pickup
cleanup   unix  n - n -  0 cleanup
qmgr      unix  n - n 300 1 qmgr
tlsmgr    unix  - - n 1000? 1 tlsmgr
rewrite   unix  - - n -  - trivial-rewrite
bounce    unix  - - n -  0 bounce
defer     unix  - - n -  0 bounce
trace     unix  - - n -  0 bounce
verify    unix  - - n -  1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -  - proxymap
smtp      unix  - - n -  - smtp
relay     unix  - - n -  - smtp
showq     unix  n - n -  - showq
error     unix  - - n -  - error
retry     unix  - - n -  - error
discard   unix  - - n -  - discard
anvil     unix  - - n -  1 anvil
scache    unix  - - n -  1 scache
postlog   unix-dgram n - n - 1 postlogd
`

// postfix runs a private Postfix instance: smtpd with its real queue
// (cleanup writes and syncs each message before the 250), relaying
// everything from loopback to a smtp-sink through smtp(8) with its
// connection cache, logging every message to a file as a default install
// logs to syslog. STARTTLS is offered with a self-signed certificate; there
// is no AUTH (Postfix needs Cyrus or Dovecot for it).
func (l *lab) postfix() (*server, error) {
	dir := filepath.Join(l.dir, "postfix")
	etc := filepath.Join(dir, "etc")
	for _, d := range []string{etc, filepath.Join(dir, "spool"), filepath.Join(dir, "data")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := exec.Command("chown", "postfix", filepath.Join(dir, "data")).Run(); err != nil {
		return nil, fmt.Errorf("chown Postfix's data directory (run as root): %w", err)
	}
	files, err := certs.EnsureSelfSigned(filepath.Join(dir, "tls"), []string{"127.0.0.1", "localhost"})
	if err != nil {
		return nil, err
	}
	roots, err := certPool(files.CAFile)
	if err != nil {
		return nil, err
	}
	sk, err := l.startSink("postfix-sink")
	if err != nil {
		return nil, err
	}
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	_, sinkPort := splitAddr(sk.addr)
	main := strings.Join([]string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(dir, "spool"),
		"data_directory = " + filepath.Join(dir, "data"),
		"inet_protocols = ipv4",
		"inet_interfaces = 127.0.0.1",
		"myhostname = postfix.bench.test",
		"mydestination =",
		"relayhost = [127.0.0.1]:" + strconv.Itoa(sinkPort),
		"mynetworks = 127.0.0.0/8",
		"smtpd_relay_restrictions = permit_mynetworks, reject",
		"smtpd_tls_security_level = may",
		"smtpd_tls_cert_file = " + files.CertFile,
		"smtpd_tls_key_file = " + files.KeyFile,
		"smtpd_client_connection_count_limit = 0",
		"default_process_limit = 200",
		"maillog_file_prefixes = " + l.dir,
		"maillog_file = " + filepath.Join(dir, "maillog"),
		"biff = no",
	}, "\n") + "\n"
	if err := os.WriteFile(filepath.Join(etc, "main.cf"), []byte(main), 0o644); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(etc, "master.cf"), fmt.Appendf(nil, postfixMaster, addr), 0o644); err != nil {
		return nil, err
	}
	if out, err := exec.Command("postfix", "-c", etc, "start").CombinedOutput(); err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "maillog"))
		return nil, fmt.Errorf("postfix start: %v\n%s%s", err, out, log)
	}
	stop := func() { exec.Command("postfix", "-c", etc, "abort").Run() }
	l.procs.add(stop)
	if err := waitListening(addr, 20*time.Second); err != nil {
		return nil, err
	}
	master := func() int {
		b, _ := os.ReadFile(filepath.Join(dir, "spool", "pid", "master.pid"))
		pid, _ := strconv.Atoi(strings.TrimSpace(string(b)))
		return pid
	}
	return &server{name: "postfix", addr: addr, starttls: true, roots: roots, sink: sk, stop: stop,
		pids: func() []int { return []int{master()} }, relayPID: master()}, nil
}
