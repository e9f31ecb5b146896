package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/mailfleet/mailfleet/api/wire"
	"github.com/mailfleet/mailfleet/internal/loopback"
	"github.com/mailfleet/mailfleet/relay/credentials"
)

// zeroLossMessages is how many messages must get a 250 in TestZeroLoss. CI
// runs the default; the full run is
//
//	go test -run TestZeroLoss -zero-loss-messages 10000 -v ./cmd/mailfleet
//
// (or MAILFLEET_ZERO_LOSS_MESSAGES=10000).
var zeroLossMessages = flag.Int("zero-loss-messages", envInt("MAILFLEET_ZERO_LOSS_MESSAGES", 2000),
	"messages that must be acknowledged with 250 in TestZeroLoss")

// zeroLossWorkers is the relay's delivery workers in TestZeroLoss.
const zeroLossWorkers = 16

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// TestZeroLoss is the headline: 20 clients submit to the relay
// binary while it is SIGKILLed and restarted at random moments; every
// message that got a 250 must reach the smarthost (a go-smtp sink) at least
// once, byte for byte. Duplicates are allowed (delivery is at least once)
// and reported.
func TestZeroLoss(t *testing.T) {
	const clients = 20
	want := *zeroLossMessages
	sink := startCountingSink(t)
	dir := t.TempDir()
	// ZL_DEBUG_DIR keeps the relay's queue, config and log after the test,
	// to look into a failure.
	if d := os.Getenv("ZL_DEBUG_DIR"); d != "" {
		dir = d
	}
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	if err := credentials.WriteFile(credsFile, []wire.Account{{
		APIUser: "zl", KeyDigests: []string{wire.Digest(key)}, BudgetPerMinute: 100_000_000,
	}}); err != nil {
		t.Fatal(err)
	}
	smtpAddr, metricsAddr := loopback.FreeAddr(t), loopback.FreeAddr(t)
	sinkHost, sinkPort, _ := net.SplitHostPort(sink.addr)
	cfgFile := filepath.Join(dir, "relay.yaml")
	// Clients log in over clear text (authRequiresTLS: false): this test is
	// about what follows AUTH, not about TLS.
	cfg := fmt.Sprintf(`hostname: relay.test
node: zl
listeners: [{name: smtp, address: %q, authRequiresTLS: false}]
credentialsFile: %s
spoolDir: %s
metricsAddress: %q
drainGracePeriod: 2s
logLevel: warn
queue: {ackWait: 3s}
delivery:
  workers: %d
  backoff: {schedule: [1s]}
  smarthost: {name: sink, host: %s, port: %s, tls: none}
`, smtpAddr, credsFile, filepath.Join(dir, "queue"), metricsAddr, zeroLossWorkers, sinkHost, sinkPort)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := &relayProcess{t: t, config: cfgFile, logFile: filepath.Join(dir, "relay.log")}
	relay.start()
	t.Cleanup(relay.kill)

	start := time.Now()
	var (
		accepted   sync.Map // id -> struct{}: got 250
		nAccepted  atomic.Int64
		nextID     atomic.Int64
		unanswered atomic.Int64 // DATA sent, no reply: the relay died
		refused    atomic.Int64 // DATA answered with an error
	)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var clientsWG sync.WaitGroup
	clientErrs := make(chan error, clients)
	for range clients {
		clientsWG.Go(func() {
			for nAccepted.Load() < int64(want) && ctx.Err() == nil {
				err := submitSession(ctx, smtpAddr, key, func() (int64, bool) {
					if nAccepted.Load() >= int64(want) {
						return 0, false
					}
					return nextID.Add(1), true
				}, func(id int64, reply string, err error) {
					switch {
					case err != nil:
						unanswered.Add(1)
					case strings.HasPrefix(reply, "250 "):
						accepted.Store(id, struct{}{})
						nAccepted.Add(1)
					default:
						refused.Add(1)
					}
				})
				if err != nil && ctx.Err() == nil {
					// The relay is down or just died: try again shortly.
					time.Sleep(20 * time.Millisecond)
				}
			}
			if ctx.Err() != nil {
				clientErrs <- fmt.Errorf("clients gave up after %v with %d of %d accepted", time.Since(start), nAccepted.Load(), want)
			}
		})
	}

	// The killer: SIGKILL at a random moment, restart at once.
	kills := 0
	stopKilling := make(chan struct{})
	killerDone := make(chan struct{})
	go func() {
		defer close(killerDone)
		for {
			select {
			case <-stopKilling:
				return
			case <-time.After(time.Duration(200+rand.IntN(1300)) * time.Millisecond):
			}
			relay.kill()
			kills++
			relay.start()
		}
	}()
	clientsWG.Wait()
	close(stopKilling)
	<-killerDone
	close(clientErrs)
	for err := range clientErrs {
		t.Fatal(err)
	}
	submitted := time.Since(start)

	// Everything acknowledged must arrive; give redeliveries (AckWait 3s)
	// and retries time.
	var missing []int64
	deadline := time.Now().Add(3 * time.Minute)
	for {
		missing = missing[:0]
		accepted.Range(func(k, _ any) bool {
			if sink.count(k.(int64)) == 0 {
				missing = append(missing, k.(int64))
			}
			return true
		})
		if len(missing) == 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if len(missing) > 0 {
		t.Fatalf("%d of %d acknowledged messages never reached the sink, e.g. %v\nrelay log tail:\n%s",
			len(missing), nAccepted.Load(), missing[:min(10, len(missing))], relay.logTail())
	}
	delivered := time.Since(start)
	// Let deliveries settle, so late duplicates are counted too: no new
	// delivery for 5 s (redeliveries come after the 3 s AckWait).
	settle := time.Now().Add(time.Minute)
	for last, stable := -1, time.Now(); time.Now().Before(settle); time.Sleep(250 * time.Millisecond) {
		if n, _ := sink.totals(); n != last {
			last, stable = n, time.Now()
		} else if time.Since(stable) > 5*time.Second {
			break
		}
	}
	depth := metricValue(t, "http://"+metricsAddr+"/metrics", "mailfleet_queue_depth")

	if bad := sink.corrupt(); len(bad) > 0 {
		t.Fatalf("%d messages arrived altered, e.g. %v", len(bad), bad[:min(10, len(bad))])
	}
	total, unique := sink.totals()
	dupes := total - unique
	acceptedNo250 := unique - int(nAccepted.Load())
	t.Logf("zero loss: %d messages acknowledged with 250 by 20 clients; %d SIGKILLs; all %d arrived intact; "+
		"%d deliveries of %d distinct messages: %d duplicates (%.3f%% of acknowledged); "+
		"%d sent without reply (relay killed), %d refused, %d delivered without a 250; "+
		"submitting took %v, everything delivered after %v; queue depth gauge at the end: %s",
		nAccepted.Load(), kills, nAccepted.Load(), total, unique, dupes, 100*float64(dupes)/float64(nAccepted.Load()),
		unanswered.Load(), refused.Load(), max(acceptedNo250, 0), submitted.Round(time.Millisecond), delivered.Round(time.Millisecond), depth)
	// A kill can duplicate the deliveries in progress: the sink said 250,
	// the relay died before the queue recorded it. That is at most the
	// workers per kill; more would mean the queue hands out finished
	// messages again.
	if limit := (kills + 1) * zeroLossWorkers; dupes > limit {
		t.Errorf("%d duplicates after %d kills: more than the %d deliveries that can be in progress at the kills", dupes, kills, limit)
	}
	relay.stop()
}

// zeroLossMessage is message id's full text as the client sends it; the
// sink rebuilds it from the id to check what arrived. Sizes vary from 1 KiB
// to 64 KiB, and every 500th message is 700 KiB, so the queue's body
// parts are crashed into too.
func zeroLossMessage(id int64) []byte {
	rng := rand.New(rand.NewPCG(uint64(id), 0x6d61696c))
	size := 1024 + rng.IntN(63*1024)
	if id%500 == 0 {
		size = 700 * 1024
	}
	var b bytes.Buffer
	fmt.Fprintf(&b, "From: zl@relay.test\r\nTo: sink@sink.test\r\nSubject: zero loss %d\r\nX-Test-Id: %d\r\n\r\n", id, id)
	line := make([]byte, 57)
	for b.Len() < size {
		for i := range line {
			line[i] = byte(rng.Uint32())
		}
		b.WriteString(base64.StdEncoding.EncodeToString(line))
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// submitSession logs in and submits messages while next hands out ids; each
// outcome goes to done. It returns when the connection fails or next says
// stop.
func submitSession(ctx context.Context, addr, key string, next func() (int64, bool), done func(int64, string, error)) error {
	d := net.Dialer{Timeout: 2 * time.Second}
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	r, w := bufio.NewReader(conn), bufio.NewWriter(conn)
	reply := func() (string, error) {
		conn.SetReadDeadline(time.Now().Add(30 * time.Second))
		var last string
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return "", err
			}
			last = strings.TrimRight(line, "\r\n")
			if len(last) < 4 || last[3] != '-' {
				return last, nil
			}
		}
	}
	expect := func(code string) error {
		got, err := reply()
		if err != nil {
			return err
		}
		if !strings.HasPrefix(got, code) {
			return fmt.Errorf("got %q, want %s", got, code)
		}
		return nil
	}
	if err := expect("220"); err != nil {
		return err
	}
	w.WriteString("EHLO client.test\r\nAUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00zl\x00"+key)) + "\r\n")
	if err := w.Flush(); err != nil {
		return err
	}
	if err := expect("250"); err != nil {
		return err
	}
	if err := expect("235"); err != nil {
		return err
	}
	for {
		id, ok := next()
		if !ok {
			w.WriteString("QUIT\r\n")
			w.Flush()
			return nil
		}
		w.WriteString("MAIL FROM:<zl@relay.test>\r\nRCPT TO:<sink@sink.test>\r\nDATA\r\n")
		if err := w.Flush(); err != nil {
			return err
		}
		for _, code := range []string{"250", "250", "354"} {
			if err := expect(code); err != nil {
				return err
			}
		}
		// The 354 came: from here on a message may be queued even if
		// no reply arrives, so the outcome is reported either way.
		w.Write(zeroLossMessage(id))
		w.WriteString(".\r\n")
		if err := w.Flush(); err != nil {
			done(id, "", err)
			return err
		}
		got, err := reply()
		done(id, got, err)
		if err != nil {
			return err
		}
	}
}

// relayProcess is the relay binary, started and killed again and again on
// the same configuration and queue directory.
type relayProcess struct {
	t       *testing.T
	config  string
	logFile string
	mu      sync.Mutex
	cmd     *exec.Cmd
	exited  chan struct{}
}

func (p *relayProcess) start() {
	p.mu.Lock()
	defer p.mu.Unlock()
	f, err := os.OpenFile(p.logFile, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Error(err)
		return
	}
	defer f.Close()
	cmd := exec.Command(binary, "relay", "--config", p.config)
	cmd.Stdout, cmd.Stderr = f, f
	if err := cmd.Start(); err != nil {
		p.t.Error(err)
		return
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	p.cmd, p.exited = cmd, exited
}

// kill SIGKILLs the relay and waits for it to be gone.
func (p *relayProcess) kill() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.exited
	p.cmd = nil
}

// stop ends the relay with SIGTERM, as Kubernetes does, and checks it exits.
func (p *relayProcess) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.exited:
		if code := p.cmd.ProcessState.ExitCode(); code != 0 {
			p.t.Errorf("relay exited %d after SIGTERM\n%s", code, p.logTail())
		}
	case <-time.After(30 * time.Second):
		p.t.Errorf("relay still running 30s after SIGTERM")
		p.cmd.Process.Kill()
		<-p.exited
	}
	p.cmd = nil
}

func (p *relayProcess) logTail() string {
	b, _ := os.ReadFile(p.logFile)
	if len(b) > 8000 {
		b = b[len(b)-8000:]
	}
	return string(b)
}

// metricValue reads one unlabelled metric from a /metrics page.
func metricValue(t *testing.T, url, name string) string {
	t.Helper()
	_, body := httpStatus(t, url)
	if m := regexp.MustCompile(`(?m)^` + name + ` (\S+)$`).FindStringSubmatch(body); m != nil {
		return m[1]
	}
	return "missing"
}

// countingSink is a go-smtp server that counts each test message it gets
// and checks its bytes.
type countingSink struct {
	addr string
	mu   sync.Mutex
	seen map[int64]int
	bad  []string
	// held counts messages read but not answered while holding; release
	// is closed when the held sessions may end.
	holding bool
	held    int
	release chan struct{}
}

// hold makes the sink read each message and then wait, without a reply and
// without counting it, until releaseHeld: the relay is left delivering.
func (s *countingSink) hold(t *testing.T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.holding, s.release = true, make(chan struct{})
	// Held sessions must end before the sink can close.
	t.Cleanup(s.releaseHeld)
}

// releaseHeld ends the held sessions with an error and accepts what
// follows.
func (s *countingSink) releaseHeld() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.holding {
		s.holding = false
		close(s.release)
	}
}

func (s *countingSink) waitHeld(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		s.mu.Lock()
		held := s.held
		s.mu.Unlock()
		if held >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages reached the holding sink", held, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

var testIDHeader = regexp.MustCompile(`(?m)^X-Test-Id: (\d+)\r$`)

func startCountingSink(t *testing.T) *countingSink {
	t.Helper()
	s := &countingSink{seen: map[int64]int{}}
	srv := smtp.NewServer(smtp.BackendFunc(func(*smtp.Conn) (smtp.Session, error) {
		return &sinkSession{sink: s}, nil
	}))
	srv.Domain = "sink.test"
	// The relay is killed mid-session again and again; the sink's
	// complaints about it are noise.
	srv.ErrorLog = log.New(io.Discard, "", 0)
	srv.MaxMessageBytes = 32 << 20
	srv.ReadTimeout, srv.WriteTimeout = time.Minute, time.Minute
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s.addr = ln.Addr().String()
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return s
}

func (s *countingSink) receive(data []byte) {
	m := testIDHeader.FindSubmatch(data)
	s.mu.Lock()
	defer s.mu.Unlock()
	if m == nil {
		s.bad = append(s.bad, fmt.Sprintf("message without X-Test-Id (%d bytes)", len(data)))
		return
	}
	id, _ := strconv.ParseInt(string(m[1]), 10, 64)
	// The relay prepends its trace headers; everything the client sent
	// follows, byte for byte.
	if !bytes.HasSuffix(data, zeroLossMessage(id)) {
		s.bad = append(s.bad, fmt.Sprintf("message %d (%d bytes) differs from what was sent", id, len(data)))
	}
	s.seen[id]++
}

func (s *countingSink) count(id int64) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seen[id]
}

func (s *countingSink) corrupt() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.bad...)
}

// totals returns all deliveries and distinct messages.
func (s *countingSink) totals() (total, unique int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.seen {
		total += n
	}
	return total, len(s.seen)
}

type sinkSession struct {
	sink *countingSink
}

func (s *sinkSession) Mail(string, *smtp.MailOptions) error { return nil }
func (s *sinkSession) Rcpt(string, *smtp.RcptOptions) error { return nil }
func (s *sinkSession) Reset()                               {}
func (s *sinkSession) Logout() error                        { return nil }

func (s *sinkSession) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.sink.mu.Lock()
	holding, release := s.sink.holding, s.sink.release
	if holding {
		s.sink.held++
	}
	s.sink.mu.Unlock()
	if holding {
		<-release
		return errors.New("held until the relay was gone")
	}
	s.sink.receive(data)
	return nil
}

// TestRedeliveryCountedAfterSIGKILL: a relay SIGKILLed while it delivers
// leaves those messages unacknowledged in JetStream; the restarted relay
// hands them out again, and its /metrics must say so in
// mailfleet_queue_redeliveries_total (the alert on duplicates watches it).
func TestRedeliveryCountedAfterSIGKILL(t *testing.T) {
	const messages = 3
	sink := startCountingSink(t)
	sink.hold(t)
	dir := t.TempDir()
	key, err := wire.NewKey()
	if err != nil {
		t.Fatal(err)
	}
	credsFile := filepath.Join(dir, "credentials.yaml")
	if err := credentials.WriteFile(credsFile, []wire.Account{{APIUser: "zl", KeyDigests: []string{wire.Digest(key)}}}); err != nil {
		t.Fatal(err)
	}
	smtpAddr, metricsAddr := loopback.FreeAddr(t), loopback.FreeAddr(t)
	sinkHost, sinkPort, _ := net.SplitHostPort(sink.addr)
	cfgFile := filepath.Join(dir, "relay.yaml")
	cfg := fmt.Sprintf(`hostname: relay.test
node: drill
listeners: [{name: smtp, address: %q, authRequiresTLS: false}]
credentialsFile: %s
spoolDir: %s
metricsAddress: %q
logLevel: warn
queue: {ackWait: 3s}
delivery: {smarthost: {name: sink, host: %s, port: %s, tls: none}}
`, smtpAddr, credsFile, filepath.Join(dir, "queue"), metricsAddr, sinkHost, sinkPort)
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	relay := &relayProcess{t: t, config: cfgFile, logFile: filepath.Join(dir, "relay.log")}
	relay.start()
	t.Cleanup(relay.kill)
	waitHTTP(t, "http://"+metricsAddr+"/readyz")

	id := int64(0)
	err = submitSession(context.Background(), smtpAddr, key, func() (int64, bool) {
		id++
		return id, id <= messages
	}, func(id int64, reply string, err error) {
		if err != nil || !strings.HasPrefix(reply, "250 ") {
			t.Errorf("message %d: %q %v", id, reply, err)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	// Every message is at the sink, which holds its reply: each is being
	// delivered, unacknowledged, when the relay dies.
	sink.waitHeld(t, messages)
	relay.kill()
	sink.releaseHeld()

	relay.start()
	waitHTTP(t, "http://"+metricsAddr+"/readyz")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, unique := sink.totals()
		if unique == messages {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d messages delivered after the restart\n%s", unique, messages, relay.logTail())
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Each held message was handed out once more, and nothing else was.
	want := strconv.Itoa(messages)
	if got := metricValue(t, "http://"+metricsAddr+"/metrics", "mailfleet_queue_redeliveries_total"); got != want {
		t.Fatalf("mailfleet_queue_redeliveries_total = %s after %d messages were redelivered, want %s\n%s", got, messages, want, relay.logTail())
	}
	relay.stop()
}

// waitHTTP waits until url answers 200.
func waitHTTP(t *testing.T, url string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200: %v", url, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
