// Command smtpsink is the mail destination of the end-to-end tests on the
// single-node cluster: an SMTP server that accepts every message (no
// authentication, no TLS) and keeps it in memory, and an HTTP API the tests
// read it back with. It is the image mailfleet.test/smtpsink (hack/image).
//
//	SMTP  :2525  any MAIL FROM, any RCPT TO, any DATA: 250
//	HTTP  :8080  GET /messages[?to=ADDR&from=ADDR]  JSON list, oldest first
//	             GET /messages/{id}/raw               the message as received
//	             GET /count                           {"count": N}
//	             DELETE /messages                     forget them all
//	             GET /healthz                         ok
//
// Messages are never dropped while the process lives: a test counts exactly
// what arrived, duplicates included (a relay that delivers twice shows up
// twice).
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/textproto"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/emersion/go-smtp"
)

func main() {
	smtpAddr := flag.String("smtp-addr", ":2525", "SMTP listen address")
	httpAddr := flag.String("http-addr", ":8080", "HTTP API listen address")
	domain := flag.String("domain", "smtpsink", "host name in the SMTP greeting")
	maxBytes := flag.Int64("max-message-bytes", 64<<20, "largest message accepted")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	if err := run(ctx, *smtpAddr, *httpAddr, *domain, *maxBytes, nil); err != nil {
		log.Fatal(err)
	}
}

// run serves until ctx ends. ready, when not nil, receives the bound
// addresses once both listeners are open (the tests listen on port 0).
func run(ctx context.Context, smtpAddr, httpAddr, domain string, maxBytes int64, ready func(smtpAddr, httpAddr net.Addr)) error {
	st := &store{}
	sl, err := net.Listen("tcp", smtpAddr)
	if err != nil {
		return err
	}
	hl, err := net.Listen("tcp", httpAddr)
	if err != nil {
		sl.Close()
		return err
	}
	s := newSMTPServer(st, domain, maxBytes)
	h := &http.Server{Handler: st.handler(), ReadHeaderTimeout: 10 * time.Second}
	log.Printf("smtpsink: SMTP on %s, HTTP on %s", sl.Addr(), hl.Addr())
	if ready != nil {
		ready(sl.Addr(), hl.Addr())
	}

	errc := make(chan error, 2)
	go func() { errc <- s.Serve(sl) }()
	go func() { errc <- h.Serve(hl) }()
	select {
	case <-ctx.Done():
	case err = <-errc:
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	s.Close()
	h.Shutdown(shutdown)
	if errors.Is(err, smtp.ErrServerClosed) || errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}

func newSMTPServer(st *store, domain string, maxBytes int64) *smtp.Server {
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &session{store: st, helo: c.Hostname(), remote: c.Conn().RemoteAddr().String()}, nil
	}))
	s.Domain = domain
	s.MaxMessageBytes = maxBytes
	s.ReadTimeout = 2 * time.Minute
	s.WriteTimeout = 2 * time.Minute
	// Advertised so that a relay passing these parameters through is not
	// refused by the sink: it records them in nothing but accepts them.
	s.EnableSMTPUTF8 = true
	s.EnableDSN = true
	return s
}

// message is one accepted transaction. raw is what DATA carried, after
// dot-unstuffing, as the relay sent it.
type message struct {
	ID       int64               `json:"id"`
	From     string              `json:"from"`
	To       []string            `json:"to"`
	Headers  map[string][]string `json:"headers"`
	Size     int                 `json:"size"`
	Received time.Time           `json:"received"`
	Helo     string              `json:"helo"`
	Remote   string              `json:"remote"`
	raw      []byte
}

type store struct {
	mu       sync.Mutex
	messages []*message
	nextID   int64
}

func (st *store) add(m *message) int64 {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.nextID++
	m.ID = st.nextID
	st.messages = append(st.messages, m)
	return m.ID
}

func (st *store) list() []*message {
	st.mu.Lock()
	defer st.mu.Unlock()
	return append([]*message(nil), st.messages...)
}

func (st *store) clear() {
	st.mu.Lock()
	defer st.mu.Unlock()
	st.messages = nil
}

type session struct {
	store        *store
	helo, remote string
	from         string
	to           []string
}

func (s *session) Reset()        { s.from, s.to = "", nil }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, _ *smtp.MailOptions) error {
	s.from, s.to = from, nil
	return nil
}

func (s *session) Rcpt(to string, _ *smtp.RcptOptions) error {
	s.to = append(s.to, to)
	return nil
}

func (s *session) Data(r io.Reader) error {
	raw, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	m := &message{
		From:     s.from,
		To:       s.to,
		Headers:  parseHeaders(raw),
		Size:     len(raw),
		Received: time.Now().UTC(),
		Helo:     s.helo,
		Remote:   s.remote,
		raw:      raw,
	}
	id := s.store.add(m)
	log.Printf("smtpsink: message %d from <%s> to %d recipient(s), %d bytes", id, m.From, len(m.To), m.Size)
	return nil
}

// parseHeaders is the message's header section by canonical name, values in
// order. A malformed section yields what could be read before the fault.
func parseHeaders(raw []byte) map[string][]string {
	h, _ := textproto.NewReader(bufio.NewReader(bytes.NewReader(raw))).ReadMIMEHeader()
	if h == nil {
		return map[string][]string{}
	}
	return h
}

func (st *store) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, map[string]int{"count": len(st.list())})
	})
	mux.HandleFunc("GET /messages", func(w http.ResponseWriter, r *http.Request) {
		from, to := r.URL.Query().Get("from"), r.URL.Query().Get("to")
		out := []*message{}
		for _, m := range st.list() {
			if from != "" && !strings.EqualFold(m.From, from) {
				continue
			}
			if to != "" && !containsFold(m.To, to) {
				continue
			}
			out = append(out, m)
		}
		writeJSON(w, out)
	})
	mux.HandleFunc("GET /messages/{id}/raw", func(w http.ResponseWriter, r *http.Request) {
		id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
		if err != nil {
			http.Error(w, "bad id", http.StatusBadRequest)
			return
		}
		for _, m := range st.list() {
			if m.ID == id {
				w.Header().Set("Content-Type", "message/rfc822")
				w.Write(m.raw)
				return
			}
		}
		http.NotFound(w, r)
	})
	mux.HandleFunc("DELETE /messages", func(w http.ResponseWriter, r *http.Request) {
		st.clear()
		w.WriteHeader(http.StatusNoContent)
	})
	return mux
}

func containsFold(list []string, s string) bool {
	for _, v := range list {
		if strings.EqualFold(v, s) {
			return true
		}
	}
	return false
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	if err := json.NewEncoder(w).Encode(v); err != nil {
		fmt.Fprintln(os.Stderr, "smtpsink: write response:", err)
	}
}
