// Package ops serves a process's operational HTTP endpoints: /healthz and
// /readyz for kubelet's probes, and /metrics for Prometheus. /metrics may
// have a listener of its own, served over TLS and behind a bearer token,
// because what it shows (queue depth, each account's traffic, when the
// certificate expires) is for the platform team, not for anyone who can
// reach the pod. The probes stay in clear and open: kubelet sends no token.
package ops

import (
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Options configure Serve.
type Options struct {
	// Addr serves /healthz and /readyz in clear, and /metrics too unless
	// MetricsAddr is set.
	Addr string
	// MetricsAddr, when set, serves /metrics alone.
	MetricsAddr string
	// TLS serves MetricsAddr over TLS; it needs MetricsAddr.
	TLS *tls.Config
	// BearerTokenFile holds the token /metrics requires; empty requires
	// none.
	BearerTokenFile string
	// Registry is what /metrics shows; promhttp adds its own errors to it.
	Registry *prometheus.Registry
	// Ready answers /readyz.
	Ready func() bool
	Log   *slog.Logger
}

// Server is the running endpoints.
type Server struct {
	probes, metrics *listener // metrics is probes when they share one
}

// Addr is where the probes are served.
func (s *Server) Addr() net.Addr { return s.probes.ln.Addr() }

// MetricsAddr is where /metrics is served.
func (s *Server) MetricsAddr() net.Addr { return s.metrics.ln.Addr() }

// Close stops serving.
func (s *Server) Close() error {
	err := s.probes.srv.Close()
	if s.metrics != s.probes {
		err = errors.Join(err, s.metrics.srv.Close())
	}
	return err
}

// Serve starts serving; the endpoints answer until Close.
func Serve(o Options) (*Server, error) {
	if o.Log == nil {
		o.Log = slog.New(slog.DiscardHandler)
	}
	separate := o.MetricsAddr != ""
	if o.TLS != nil && !separate {
		return nil, errors.New("metrics over TLS needs an address of its own: the probes stay in clear")
	}
	metrics, err := metricsHandler(o)
	if err != nil {
		return nil, err
	}
	probes := probeMux(o.Ready)
	if !separate {
		probes.Handle("/metrics", metrics)
	}
	s := &Server{}
	if s.probes, err = listen(o.Addr, probes, nil, o.Log); err != nil {
		return nil, err
	}
	s.metrics = s.probes
	if separate {
		mux := http.NewServeMux()
		mux.Handle("/metrics", metrics)
		if s.metrics, err = listen(o.MetricsAddr, mux, o.TLS, o.Log); err != nil {
			s.probes.srv.Close()
			return nil, err
		}
	}
	return s, nil
}

func metricsHandler(o Options) (http.Handler, error) {
	h := promhttp.HandlerFor(o.Registry, promhttp.HandlerOpts{Registry: o.Registry})
	if o.BearerTokenFile == "" {
		return h, nil
	}
	// Read once now, so a missing or empty file stops the start rather
	// than refusing every scrape.
	if _, err := readToken(o.BearerTokenFile); err != nil {
		return nil, err
	}
	return requireBearer(o.BearerTokenFile, o.Log, h), nil
}

func probeMux(ready func() bool) *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready == nil || !ready() {
			http.Error(w, "not ready: draining, credentials not loaded yet, or the queue unreachable", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	return mux
}

// listener is one HTTP server and its socket.
type listener struct {
	ln  net.Listener
	srv *http.Server
}

func listen(addr string, h http.Handler, tlsCfg *tls.Config, log *slog.Logger) (*listener, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for metrics and probes on %s: %w", addr, err)
	}
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second, TLSConfig: tlsCfg}
	go func() {
		var err error
		if tlsCfg != nil {
			// The certificate comes from TLSConfig.GetCertificate.
			err = srv.ServeTLS(ln, "", "")
		} else {
			err = srv.Serve(ln)
		}
		if err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server failed", "address", addr, "err", err)
		}
	}()
	return &listener{ln: ln, srv: srv}, nil
}
