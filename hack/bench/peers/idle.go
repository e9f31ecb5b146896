package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// idleEnv, when set in this program's environment, makes it hold idle
// sessions open instead of measuring: "address,CA file,sessions,ready
// file". The sessions live in a process of their own so that the load
// generator measuring the active sessions carries none of their memory or
// garbage collection: what changes between the runs is the relay's load
// alone.
const idleEnv = "MAILFLEET_PEERS_IDLE"

// measureIdle measures the accept rate of o.sessions active sessions
// before, while and after o.idle sessions sit idle after STARTTLS on the
// relay, o.rounds runs each, and the relay's RSS per idle session.
func measureIdle(ctx context.Context, l *lab, o options, rep *report) error {
	relay, err := mailfleetServer(ctx, l, rep)
	if err != nil {
		return err
	}
	rounds := max(o.rounds, 1)
	active := func() []float64 {
		var rates []float64
		for range rounds {
			r := load{srv: relay, sessions: o.sessions, size: 4096, messages: 4000}.run(ctx)
			rates = append(rates, float64(r.accepted.Load())/r.elapsed.Seconds())
		}
		return rates
	}
	res := idleResult{sessions: o.idle}
	res.before = active()
	res.rssBefore = rssBytes(relay.relayPID)
	start := time.Now()
	release, err := l.holdIdle(relay, o.idle)
	if err != nil {
		return err
	}
	res.openSeconds = time.Since(start).Seconds()
	time.Sleep(2 * time.Second) // let the relay's heap settle
	res.rssWith = rssBytes(relay.relayPID)
	res.with = active()
	release()
	time.Sleep(2 * time.Second) // the relay ends the closed sessions
	res.after = active()
	rep.idle = &res
	log.Printf("idle: %d sessions opened in %.1fs; relay RSS %d -> %d MiB (%.1f KiB/session); active accept %.0f, %.0f while idle, %.0f after (%.2fx)",
		res.sessions, res.openSeconds, res.rssBefore>>20, res.rssWith>>20, res.perSessionKiB(),
		medianOf(res.before), medianOf(res.with), medianOf(res.after), res.ratio())
	return nil
}

// mailfleetServer is the relay the accept measurement started, or a new one.
func mailfleetServer(ctx context.Context, l *lab, rep *report) (*server, error) {
	for _, s := range rep.servers {
		if s.name == "mailfleet" {
			return s, nil
		}
	}
	return l.mailfleet(ctx)
}

// holdIdle starts this program again holding n idle sessions to srv and
// returns once they are all open; release closes them.
func (l *lab) holdIdle(srv *server, n int) (release func(), err error) {
	self, err := os.Executable()
	if err != nil {
		return nil, err
	}
	ready := filepath.Join(l.dir, "idle-ready")
	spec := strings.Join([]string{srv.addr, srv.caFile, strconv.Itoa(n), ready}, ",")
	cmd, stop, err := l.start("idle-holder", "env", idleEnv+"="+spec, self)
	if err != nil {
		return nil, err
	}
	deadline := time.Now().Add(5 * time.Minute)
	for {
		if _, err := os.Stat(ready); err == nil {
			return stop, nil
		}
		if cmd.Process.Signal(syscall.Signal(0)) != nil || time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("idle sessions not opened\n%s", l.logTail("idle-holder"))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// serveIdle is the holder holdIdle starts: it opens the sessions spec
// names, says so by creating the ready file, and keeps them until killed.
func serveIdle(spec string) error {
	f := strings.Split(spec, ",")
	if len(f) != 4 {
		return fmt.Errorf("%s: want address,CA file,sessions,ready file; got %q", idleEnv, spec)
	}
	n, err := strconv.Atoi(f[2])
	if err != nil {
		return fmt.Errorf("%s: sessions: %w", idleEnv, err)
	}
	roots, err := certPool(f[1])
	if err != nil {
		return err
	}
	srv := &server{name: "idle", addr: f[0], starttls: true, roots: roots}
	conns := make([]*smtpConn, 0, n)
	for len(conns) < n {
		c, err := dialSMTP(context.Background(), srv)
		if err != nil {
			return fmt.Errorf("idle session %d: %w", len(conns)+1, err)
		}
		conns = append(conns, c)
	}
	if err := os.WriteFile(f[3], []byte("open\n"), 0o644); err != nil {
		return err
	}
	select {} // the sessions stay open until the harness kills this process
}

type idleResult struct {
	sessions            int
	openSeconds         float64
	rssBefore, rssWith  int64
	before, with, after []float64
}

func (r idleResult) perSessionKiB() float64 {
	return float64(r.rssWith-r.rssBefore) / float64(r.sessions) / 1024
}

// ratio is the active rate while the sessions are idle against the mean
// of the rates before and after: the runs around it bracket it in time,
// so a drift of the machine's load over the measurement does not read as
// the idle sessions' cost.
func (r idleResult) ratio() float64 {
	return medianOf(r.with) / ((medianOf(r.before) + medianOf(r.after)) / 2)
}

// medianOf is med of a copy: the runs stay in the order they ran, which
// the report prints.
func medianOf(v []float64) float64 { return med(slices.Clone(v)) }
