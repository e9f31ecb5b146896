// Package smtpsink is a next hop for tests: an SMTP server on loopback
// (emersion/go-smtp) that accepts every message and keeps what it got.
package smtpsink

import (
	"errors"
	"io"
	"net"
	"sync"
	"testing"

	"github.com/emersion/go-smtp"
)

// Message is one message the sink accepted.
type Message struct {
	From string
	To   []string
	Data []byte
}

// Sink records the messages it accepts.
type Sink struct {
	// Addr is its 127.0.0.1 address.
	Addr string

	mu       sync.Mutex
	messages []Message
	arrived  chan struct{}
}

// Start serves on 127.0.0.1 with a free port, without TLS or AUTH (a
// smarthost configured with tls: None); it stops in t.Cleanup.
func Start(t testing.TB) *Sink { return StartAt(t, "127.0.0.1:0") }

// StartAt serves on addr, as Start does: a test that took a sink down
// brings it back on the address the relay is configured with.
func StartAt(t testing.TB, addr string) *Sink {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &Sink{Addr: ln.Addr().String(), arrived: make(chan struct{}, 1)}
	srv := smtp.NewServer(backend{s})
	srv.Domain = "sink.test"
	srv.MaxMessageBytes = 32 << 20
	srv.AllowInsecureAuth = true
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, smtp.ErrServerClosed) {
			t.Logf("smtp sink: %v", err)
		}
	}()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return s
}

// Messages returns a copy of what arrived so far, in order.
func (s *Sink) Messages() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.messages...)
}

// Arrived is signalled (without blocking the sink) after each message.
func (s *Sink) Arrived() <-chan struct{} { return s.arrived }

func (s *Sink) add(m Message) {
	s.mu.Lock()
	s.messages = append(s.messages, m)
	s.mu.Unlock()
	select {
	case s.arrived <- struct{}{}:
	default:
	}
}

type backend struct{ s *Sink }

func (b backend) NewSession(*smtp.Conn) (smtp.Session, error) { return &session{sink: b.s}, nil }

type session struct {
	sink *Sink
	msg  Message
}

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.msg = Message{From: from}
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.msg.To = append(s.msg.To, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	s.msg.Data = data
	s.sink.add(s.msg)
	s.msg = Message{}
	return nil
}

func (s *session) Reset()        { s.msg = Message{} }
func (s *session) Logout() error { return nil }
