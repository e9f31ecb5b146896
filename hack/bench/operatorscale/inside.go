package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// What the operator says of itself: its metrics (how many reconciles each
// controller ran) and, with -profile, CPU profiles. The API server's
// request counts say what the operator asked of it; these say what the
// operator did for it, and where its own CPU went on the cores it shares
// with the API server and etcd.

// profileChunk is the length of each CPU profile taken during the scale
// phase; the last, cut short when all are Ready, is lost.
const profileChunk = 10 * time.Second

// loopbackAddr returns a free address on 127.0.0.1 for the operator to
// listen on.
func loopbackAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", fmt.Errorf("free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// reconcileCounts is controller_runtime_reconcile_total by "controller
// result".
type reconcileCounts = requestCounts

// operatorReconciles reads the operator's reconcile counters from its
// metrics endpoint.
func operatorReconciles(ctx context.Context, addr string) (reconcileCounts, error) {
	body, err := httpGet(ctx, "http://"+addr+"/metrics")
	if err != nil {
		return nil, fmt.Errorf("operator metrics: %w", err)
	}
	defer body.Close()
	return sumCounter(body, "controller_runtime_reconcile_total", func(l map[string]string) string {
		return l["controller"] + " " + l["result"]
	})
}

func httpGet(ctx context.Context, url string) (io.ReadCloser, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		resp.Body.Close()
		return nil, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return resp.Body, nil
}

// profiler takes the operator's CPU profiles, one after another, into dir
// until stopped, and then its allocations since it started.
type profiler struct {
	addr, dir string
	cancel    context.CancelFunc
	wg        sync.WaitGroup
	files     []string
}

func startProfiler(ctx context.Context, addr, dir string) (*profiler, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("profile directory: %w", err)
	}
	ctx, cancel := context.WithCancel(ctx)
	p := &profiler{addr: addr, dir: dir, cancel: cancel}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			path := filepath.Join(dir, fmt.Sprintf("cpu-%03d.pb.gz", i))
			if err := fetchProfile(ctx, addr, path); err != nil {
				if ctx.Err() == nil {
					fmt.Fprintf(os.Stderr, "operator CPU profile: %v\n", err)
					time.Sleep(time.Second)
				}
				continue
			}
			p.files = append(p.files, path)
		}
	}()
	return p, nil
}

func fetchProfile(ctx context.Context, addr, path string) error {
	return fetchTo(ctx, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(profileChunk.Seconds())), path)
}

func fetchTo(ctx context.Context, url, path string) error {
	body, err := httpGet(ctx, url)
	if err != nil {
		return err
	}
	defer body.Close()
	var buf bytes.Buffer
	if _, err := io.Copy(&buf, body); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

// stop ends profiling and returns the profiles taken, the allocations
// last.
func (p *profiler) stop(ctx context.Context) []string {
	if p == nil {
		return nil
	}
	p.cancel()
	p.wg.Wait()
	allocs := filepath.Join(p.dir, "allocs.pb.gz")
	if err := fetchTo(ctx, "http://"+p.addr+"/debug/pprof/allocs", allocs); err != nil {
		fmt.Fprintf(os.Stderr, "operator allocation profile: %v\n", err)
		return p.files
	}
	return append(p.files, allocs)
}

// operatorWatch is what is read of the operator during the scale phase.
type operatorWatch struct {
	c          *cluster
	cpuBefore  time.Duration
	reconciles reconcileCounts
	profiler   *profiler
}

// watchOperator starts following the operator (nothing without one).
func (c *cluster) watchOperator(ctx context.Context, o options) (*operatorWatch, error) {
	w := &operatorWatch{c: c}
	if c.operator == nil {
		return w, nil
	}
	w.cpuBefore, _ = procCPU(c.operator.pid())
	var err error
	if w.reconciles, err = operatorReconciles(ctx, c.metricsAddr); err != nil {
		// Started a moment ago: it may not listen yet.
		w.reconciles = reconcileCounts{}
	}
	if o.profileDir != "" {
		if w.profiler, err = startProfiler(ctx, c.pprofAddr, o.profileDir); err != nil {
			return nil, err
		}
	}
	return w, nil
}

// stop records the operator's CPU time, reconciles and profiles since
// watchOperator.
func (w *operatorWatch) stop(ctx context.Context, rep *report) {
	if w.c.operator == nil {
		return
	}
	rep.profiles = w.profiler.stop(ctx)
	if cpu, err := procCPU(w.c.operator.pid()); err == nil {
		rep.operatorCPU = cpu - w.cpuBefore
	}
	if after, err := operatorReconciles(ctx, w.c.metricsAddr); err == nil {
		rep.reconciles = after.minus(w.reconciles)
	}
}
