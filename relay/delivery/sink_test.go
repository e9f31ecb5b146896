package delivery

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"github.com/mailfleet/mailfleet/relay/certs"
	"github.com/mailfleet/mailfleet/relay/spool"
)

// testCA issues the sinks' certificates; clients trust it through roots().
var (
	testCAOnce sync.Once
	testCA     *certs.CA
	testCAErr  error
)

func caFor(t testing.TB) *certs.CA {
	t.Helper()
	testCAOnce.Do(func() { testCA, testCAErr = certs.GenerateCA("mailfleet delivery test CA") })
	if testCAErr != nil {
		t.Fatal(testCAErr)
	}
	return testCA
}

func roots(t *testing.T) *x509.CertPool {
	pool := x509.NewCertPool()
	pool.AddCert(caFor(t).Cert)
	return pool
}

// received is one message a sink accepted.
type received struct {
	from string
	to   []string
	body []byte
	tls  bool
	user string
}

// sink is a go-smtp server that records what it accepts and answers as a
// test tells it.
type sink struct {
	addr string
	srv  *smtp.Server

	// active counts the sessions open now, mostActive the most at once,
	// refused those answered 421 for being one too many.
	active, mostActive, refused atomic.Int64
	// conns counts accepted TCP connections, commands RSETs seen.
	conns    atomic.Int64
	resets   atomic.Int64
	accepted atomic.Int64

	mu       sync.Mutex
	messages []received
	// rcptReply answers RCPT for an address; nil accepts.
	rcptReply map[string]*smtp.SMTPError
	// dataReply answers the end of DATA; nil accepts.
	dataReply *smtp.SMTPError
	// cutAfter closes the connection once the body reached this many bytes.
	cutAfter int
}

type sinkOptions struct {
	ip          string // default 127.0.0.1
	tls         bool   // offer STARTTLS with a certificate for ip and "sink.test"
	implicitTLS bool
	user, pass  string // require AUTH with these
	mechs       []string
	maxBytes    int64
	readTimeout time.Duration
	port        string // default "0"
	// count only counts accepted messages, keeping no bodies (benchmarks).
	countOnly bool
	// maxSessions, when set, answers 421 to a session beyond it, as a
	// provider that takes only so many connections from one sender does.
	maxSessions int64
	// delay is how long the sink takes over each message's DATA.
	delay time.Duration
}

func startSink(t testing.TB, o sinkOptions) *sink {
	t.Helper()
	if o.ip == "" {
		o.ip = "127.0.0.1"
	}
	if o.maxBytes == 0 {
		o.maxBytes = 20_000_000
	}
	if len(o.mechs) == 0 {
		o.mechs = []string{sasl.Plain, sasl.Login}
	}
	s := &sink{rcptReply: map[string]*smtp.SMTPError{}}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		// Sessions are counted from here to Logout, which go-smtp calls
		// before it closes the connection (and before STARTTLS's new
		// session): a client that saw the connection end has seen it
		// counted out.
		n := s.active.Add(1)
		if o.maxSessions > 0 && n > o.maxSessions {
			s.active.Add(-1)
			s.refused.Add(1)
			return nil, &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 7, 0}, Message: "Too many connections from your IP"}
		}
		for most := s.mostActive.Load(); n > most && !s.mostActive.CompareAndSwap(most, n); most = s.mostActive.Load() {
		}
		return &sinkSession{sink: s, conn: c, opts: o}, nil
	}))
	srv.Domain = "sink.test"
	srv.MaxMessageBytes = o.maxBytes
	srv.MaxRecipients = 1000
	srv.ReadTimeout = orDefault(o.readTimeout, 30*time.Second)
	srv.WriteTimeout = 30 * time.Second
	srv.ErrorLog = discardLogger{}
	var tlsCfg *tls.Config
	if o.tls || o.implicitTLS {
		certPEM, keyPEM, err := caFor(t).Issue([]string{"sink.test", o.ip}, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		tlsCfg = &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		srv.TLSConfig = tlsCfg
	}
	var ln net.Listener
	if o.port == "" {
		o.port = "0"
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(o.ip, o.port))
	if err != nil {
		t.Fatal(err)
	}
	ln = &countingListener{Listener: ln, n: &s.conns}
	if o.implicitTLS {
		ln = tls.NewListener(ln, tlsCfg)
	}
	s.addr = ln.Addr().String()
	s.srv = srv
	done := make(chan struct{})
	go func() {
		defer close(done)
		srv.Serve(ln)
	}()
	t.Cleanup(func() {
		// Close the listener too: Serve may not have registered it with
		// the server yet, and then srv.Close alone would not stop it.
		srv.Close()
		ln.Close()
		<-done
	})
	return s
}

func (s *sink) port() int {
	_, p, _ := net.SplitHostPort(s.addr)
	n := 0
	for _, c := range p {
		n = n*10 + int(c-'0')
	}
	return n
}

func (s *sink) host() string {
	h, _, _ := net.SplitHostPort(s.addr)
	return h
}

func (s *sink) got() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received(nil), s.messages...)
}

func (s *sink) setRcptReply(addr string, e *smtp.SMTPError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rcptReply[addr] = e
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

type countingListener struct {
	net.Listener
	n *atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return c, err
	}
	l.n.Add(1)
	return c, nil
}

type sinkSession struct {
	sink   *sink
	conn   *smtp.Conn
	opts   sinkOptions
	authed string
	from   string
	to     []string
}

func (ss *sinkSession) AuthMechanisms() []string {
	if ss.opts.user == "" {
		return nil
	}
	return ss.opts.mechs
}

func (ss *sinkSession) Auth(mech string) (sasl.Server, error) {
	check := func(user, pass string) error {
		if user != ss.opts.user || pass != ss.opts.pass {
			return smtp.ErrAuthFailed
		}
		ss.authed = user
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(func(_, user, pass string) error { return check(user, pass) }), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

func (ss *sinkSession) Mail(from string, _ *smtp.MailOptions) error {
	if ss.opts.user != "" && ss.authed == "" {
		return smtp.ErrAuthRequired
	}
	ss.from = from
	return nil
}

func (ss *sinkSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	ss.sink.mu.Lock()
	e := ss.sink.rcptReply[to]
	ss.sink.mu.Unlock()
	if e != nil {
		return e
	}
	ss.to = append(ss.to, to)
	return nil
}

func (ss *sinkSession) Data(r io.Reader) error {
	ss.sink.mu.Lock()
	cut, reply := ss.sink.cutAfter, ss.sink.dataReply
	ss.sink.mu.Unlock()
	if cut > 0 {
		io.CopyN(io.Discard, r, int64(cut))
		ss.conn.Conn().Close()
		return errors.New("cut")
	}
	body, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	time.Sleep(ss.opts.delay)
	if reply != nil {
		return reply
	}
	ss.sink.accepted.Add(1)
	if ss.opts.countOnly {
		return nil
	}
	_, isTLS := ss.conn.TLSConnectionState()
	ss.sink.mu.Lock()
	ss.sink.messages = append(ss.sink.messages, received{from: ss.from, to: ss.to, body: body, tls: isTLS, user: ss.authed})
	ss.sink.mu.Unlock()
	return nil
}

func (ss *sinkSession) Reset() {
	ss.sink.resets.Add(1)
	ss.from, ss.to = "", nil
}

func (ss *sinkSession) Logout() error {
	ss.sink.active.Add(-1)
	return nil
}

// loginServer is the server side of AUTH LOGIN, which go-sasl lacks.
type loginServer struct {
	check func(user, pass string) error
	user  string
	step  int
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step = 1
		if resp == nil {
			return []byte("Username:"), false, nil
		}
		l.user = string(resp)
		l.step = 2
		return []byte("Password:"), false, nil
	case 1:
		l.user = string(resp)
		l.step = 2
		return []byte("Password:"), false, nil
	default:
		return nil, true, l.check(l.user, string(resp))
	}
}

// message builds a Message whose body is body, with the envelope fields a
// relay fills in.
func message(id string, body []byte, to ...string) Message {
	env := spool.Envelope{
		ID: id, APIUser: "acme", LabelID: "1001", From: "billing@acme.example", To: to,
		ReceivedAt: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC),
		RemoteAddr: "192.0.2.7:40000", Helo: "client.example", TLS: true,
	}
	return Message{
		Envelope: env, Size: int64(len(body)),
		Open: func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil },
	}
}

// afterTrace returns what a sink received after the two trace headers.
func afterTrace(t *testing.T, body []byte) []byte {
	t.Helper()
	i := bytes.Index(body, []byte("\r\nX-Mailfleet-Label: "))
	if !bytes.HasPrefix(body, []byte("Received: ")) || i < 0 {
		t.Fatalf("body does not start with the trace headers: %.300q", body)
	}
	rest := body[i+2:]
	j := bytes.Index(rest, []byte("\r\n"))
	return rest[j+2:]
}

func outcomes(rs []Result) string {
	var parts []string
	for _, r := range rs {
		parts = append(parts, r.Recipient+"="+r.Outcome.String())
	}
	return strings.Join(parts, " ")
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}
