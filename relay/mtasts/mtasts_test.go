package mtasts

import (
	"context"
	"crypto/x509"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	p, err := Parse("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.example.net\r\nmax_age: 604800\r\n")
	if err != nil || p.Mode != ModeEnforce || len(p.MX) != 2 || p.MaxAge != 7*24*time.Hour {
		t.Fatalf("%+v %v", p, err)
	}
	for host, want := range map[string]bool{
		"mail.example.com": true, "MAIL.example.com.": true, "a.example.net": true,
		"example.net": false, "a.b.example.net": false, "mail.example.com.evil": false,
	} {
		if p.Matches(host) != want {
			t.Errorf("Matches(%q) = %v", host, !want)
		}
	}
	for _, bad := range []string{
		"mode: enforce\nmx: a\nmax_age: 1\n",                  // no version
		"version: STSv1\nmode: strict\nmx: a\nmax_age: 1\n",   // unknown mode
		"version: STSv1\nmode: enforce\nmax_age: 1\n",         // no mx
		"version: STSv1\nmode: enforce\nmx: a\nmax_age: -1\n", // bad max_age
		"version: STSv1\nmode: enforce\nmx: a\n",              // no max_age
	} {
		if _, err := Parse(bad); err == nil {
			t.Errorf("Parse(%q) accepted", bad)
		}
	}
	if p, _ := Parse("version: STSv1\nmode: enforce\nmx: a\nmax_age: 999999999\n"); p.MaxAge != maxMaxAge {
		t.Errorf("max_age not capped: %v", p.MaxAge)
	}
}

func TestRecordID(t *testing.T) {
	for _, tt := range []struct {
		records []string
		want    string
	}{
		{[]string{"v=STSv1; id=abc"}, "abc"},
		{[]string{"v=spf1 -all", "v=STSv1;id=x1"}, "x1"},
		{[]string{"v=STSv1; id=a", "v=STSv1; id=b"}, ""}, // two records: none (§3.1)
		{[]string{"v=STSv2; id=a"}, ""},
	} {
		if got := recordID(tt.records); got != tt.want {
			t.Errorf("recordID(%q) = %q, want %q", tt.records, got, tt.want)
		}
	}
}

// zone is a TXT resolver a test edits.
type zone struct {
	mu  sync.Mutex
	txt map[string][]string
}

var errNX = errors.New("NXDOMAIN")

func (z *zone) LookupTXT(_ context.Context, name string) ([]string, error) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if r, ok := z.txt[name]; ok {
		return r, nil
	}
	return nil, errNX
}

func (z *zone) set(name string, records ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	if records == nil {
		delete(z.txt, name)
		return
	}
	z.txt[name] = records
}

// TestFinderCache: a policy is fetched again only when the TXT id
// changes; a withdrawn record leaves the cached policy in force until its
// max_age ends (an attacker on the path could strip the record); a
// redirect is not followed.
func TestFinderCache(t *testing.T) {
	var fetches atomic.Int64
	var body atomic.Value
	body.Store("version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 3600\n")
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if r.Host == "mta-sts.redirect.example" {
			http.Redirect(w, r, "https://elsewhere.example/", http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Write([]byte(body.Load().(string)))
	}))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	now := time.Now()
	var clock sync.Mutex
	z := &zone{txt: map[string][]string{"_mta-sts.example.org": {"v=STSv1; id=1"}, "_mta-sts.redirect.example": {"v=STSv1; id=1"}}}
	f := New(Config{DNS: z, IsNotFound: func(err error) bool { return errors.Is(err, errNX) }, RootCAs: pool,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
		},
		Now: func() time.Time { clock.Lock(); defer clock.Unlock(); return now }})
	// httptest's certificate names example.com; the client asks for
	// mta-sts.example.org, so trust it by name for this test only.
	f.client.Transport.(*http.Transport).TLSClientConfig.ServerName = "example.com"
	ctx := context.Background()
	find := func(domain string) *Policy {
		t.Helper()
		p, err := f.Find(ctx, domain)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	if p := find("example.org"); p == nil || p.ID != "1" || p.MX[0] != "mx.example.org" {
		t.Fatalf("%+v", p)
	}
	find("example.org")
	if fetches.Load() != 1 {
		t.Fatalf("%d fetches for an unchanged id", fetches.Load())
	}
	body.Store("version: STSv1\nmode: enforce\nmx: mx2.example.org\nmax_age: 3600\n")
	z.set("_mta-sts.example.org", "v=STSv1; id=2")
	if p := find("example.org"); p.MX[0] != "mx2.example.org" || fetches.Load() != 2 {
		t.Fatalf("a new id: %+v after %d fetches", p, fetches.Load())
	}
	z.set("_mta-sts.example.org")
	if p := find("example.org"); p == nil || p.ID != "2" {
		t.Fatalf("a withdrawn record dropped the cached policy before its max_age: %+v", p)
	}
	clock.Lock()
	now = now.Add(2 * time.Hour)
	clock.Unlock()
	if p := find("example.org"); p != nil {
		t.Fatalf("a policy past its max_age without a record: %+v", p)
	}
	if p, err := f.Find(ctx, "redirect.example"); err == nil || p != nil {
		t.Fatalf("a redirect was followed: %+v, %v", p, err)
	}
}

// TestFinderFetchesOnce: many deliveries asking at once for a domain's
// new policy make one HTTPS request between them, and a caller that gives
// up does not fail the others.
func TestFinderFetchesOnce(t *testing.T) {
	var fetches atomic.Int64
	release := make(chan struct{})
	srv := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		<-release
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("version: STSv1\nmode: enforce\nmx: mx.example.org\nmax_age: 3600\n"))
	}))
	defer srv.Close()
	pool := x509.NewCertPool()
	pool.AddCert(srv.Certificate())
	z := &zone{txt: map[string][]string{"_mta-sts.example.org": {"v=STSv1; id=7"}}}
	f := New(Config{DNS: z, IsNotFound: func(err error) bool { return errors.Is(err, errNX) }, RootCAs: pool,
		Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, srv.Listener.Addr().String())
		}})
	f.client.Transport.(*http.Transport).TLSClientConfig.ServerName = "example.com"

	impatient, cancel := context.WithCancel(context.Background())
	const callers = 20
	results := make(chan error, callers)
	for i := range callers {
		ctx := context.Background()
		if i == 0 {
			ctx = impatient
		}
		go func() {
			p, err := f.Find(ctx, "example.org")
			if err == nil && (p == nil || p.ID != "7") {
				err = errors.New("no policy")
			}
			results <- err
		}()
	}
	// Wait until the one fetch is in flight, let the first caller give
	// up, then answer.
	for fetches.Load() == 0 {
		time.Sleep(time.Millisecond)
	}
	cancel()
	close(release)
	for range callers {
		if err := <-results; err != nil {
			t.Error(err)
		}
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("%d fetches for %d callers, want 1", n, callers)
	}
}
