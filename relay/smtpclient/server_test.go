package smtpclient

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// server is a scripted SMTP server on loopback, so tests can put the client
// before any reply sequence. It greets, lists ext in its EHLO reply, and
// answers each command with the reply scripted for the whole line, else for
// its verb, else a success. It speaks no TLS: it hangs up after agreeing to
// STARTTLS, which fails the client's handshake.
type server struct {
	addr  string
	ext   []string
	conns atomic.Int64

	mu      sync.Mutex
	replies map[string]string
	cmds    []string
	bodies  []string
	open    []net.Conn
	// cut hangs up as the body starts to arrive.
	cut bool
}

func startServer(t *testing.T, ext ...string) *server {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := &server{addr: ln.Addr().String(), ext: ext, replies: map[string]string{}}
	var sessions sync.WaitGroup
	accepting := make(chan struct{})
	go func() {
		defer close(accepting)
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			s.conns.Add(1)
			s.mu.Lock()
			s.open = append(s.open, conn)
			s.mu.Unlock()
			sessions.Go(func() { s.serve(conn) })
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		<-accepting
		s.mu.Lock()
		for _, c := range s.open {
			c.Close()
		}
		s.mu.Unlock()
		sessions.Wait()
	})
	return s
}

// script makes the server answer key (a whole command line, or a verb, or
// "." for the end of the body) with reply.
func (s *server) script(key, reply string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.replies[key] = reply
}

func (s *server) serve(conn net.Conn) {
	defer conn.Close()
	br := bufio.NewReader(conn)
	fmt.Fprint(conn, "220 fake.test ESMTP\r\n")
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		cmd := strings.TrimRight(line, "\r\n")
		verb, _, _ := strings.Cut(cmd, " ")
		reply := s.reply(cmd, strings.ToUpper(verb))
		fmt.Fprint(conn, reply)
		switch {
		case verb == "QUIT", verb == "STARTTLS" && strings.HasPrefix(reply, "220"):
			return
		case verb == "DATA" && strings.HasPrefix(reply, "354"):
			if !s.readBody(conn, br) {
				return
			}
		}
	}
}

// reply records cmd and finds its answer.
func (s *server) reply(cmd, verb string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.cmds = append(s.cmds, cmd)
	for _, key := range []string{cmd, verb} {
		if r, ok := s.replies[key]; ok {
			return r + "\r\n"
		}
	}
	switch verb {
	case "EHLO":
		return s.ehlo()
	case "DATA":
		return "354 go on\r\n"
	case "QUIT":
		return "221 2.0.0 bye\r\n"
	}
	return "250 2.0.0 ok\r\n"
}

func (s *server) ehlo() string {
	lines := append([]string{"fake.test"}, s.ext...)
	var b strings.Builder
	for i, l := range lines {
		sep := "-"
		if i == len(lines)-1 {
			sep = " "
		}
		b.WriteString("250" + sep + l + "\r\n")
	}
	return b.String()
}

// readBody reads the body up to its final dot, as sent (dot-stuffed), and
// answers it; false means the server hung up.
func (s *server) readBody(conn net.Conn, br *bufio.Reader) bool {
	s.mu.Lock()
	cut := s.cut
	s.mu.Unlock()
	var body strings.Builder
	for {
		line, err := br.ReadString('\n')
		if err != nil || cut {
			return false
		}
		if line == ".\r\n" {
			break
		}
		body.WriteString(line)
	}
	s.mu.Lock()
	s.bodies = append(s.bodies, body.String())
	s.mu.Unlock()
	fmt.Fprint(conn, s.reply(".", "."))
	return true
}

func (s *server) got() (cmds, bodies []string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.cmds), slices.Clone(s.bodies)
}

// count is how often cmd is among cmds.
func count(cmds []string, cmd string) int {
	n := 0
	for _, c := range cmds {
		if c == cmd {
			n++
		}
	}
	return n
}

func paramsFor(s *server) Params {
	return Params{
		Host: "fake.test", Addr: s.addr, LocalName: "relay.test", TLS: TLSNone,
		DialTimeout: 2 * time.Second, CommandTimeout: 5 * time.Second, DataTimeout: 5 * time.Second,
	}
}

// dialTo opens a session with s, closed when the test ends.
func dialTo(t *testing.T, s *server) *Client {
	t.Helper()
	c, err := Dial(ctxFor(t), paramsFor(s))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return c
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
