package main

import (
	"context"
	"fmt"
	"log"
	"syscall"
	"time"
)

// sample is one second of a sustained run: totals so far.
type sample struct {
	t                   float64
	accepted, delivered int64
}

// sustainedRun is one server's sustained run.
type sustainedRun struct {
	server          string
	offered         int
	samples         []sample
	accepted        int64
	acceptSeconds   float64 // how long the load was offered
	deliverSeconds  float64 // from the start until the last message reached the sink
	maxDepth        int64
	drained         bool
	cpuPer1000      float64
	acceptedPerSec  float64
	deliveredPerSec float64
}

// measureSustained offers a fixed load to mailfleet and Postfix in turn
// and samples every second what was accepted and what reached the sink.
func measureSustained(ctx context.Context, l *lab, o options, rep *report) error {
	servers := rep.servers
	if servers == nil {
		var err error
		if servers, err = startServers(ctx, l, o.skipPeers); err != nil {
			return err
		}
		rep.servers = servers
	}
	rate := o.rate
	if rate == 0 {
		rate = int(0.9 * median(rep.accept[acceptKey{"mailfleet", "go", 4096, false}]).rate)
	}
	if rate <= 0 {
		return fmt.Errorf("no offered rate: give -rate, or run the accept measurement first")
	}
	for _, srv := range servers {
		if srv.sink == nil {
			continue
		}
		only(servers, srv)
		run, err := sustainOnce(ctx, srv, o, rate)
		if err != nil {
			return fmt.Errorf("%s: %w", srv.name, err)
		}
		log.Printf("sustained %-9s offered %d/s: accepted %.0f/s, delivered %.0f/s (%.0f%%), max depth %d",
			srv.name, rate, run.acceptedPerSec, run.deliveredPerSec, 100*run.deliveredPerSec/run.acceptedPerSec, run.maxDepth)
		rep.sustained = append(rep.sustained, run)
	}
	return nil
}

func sustainOnce(ctx context.Context, srv *server, o options, rate int) (*sustainedRun, error) {
	base := srv.sink.delivered.Load()
	cpu0 := cpuSeconds(srv.pids()...)
	run := &sustainedRun{server: srv.name, offered: rate}
	lctx, stop := context.WithTimeout(ctx, o.sustain)
	defer stop()
	lr := &loadResult{} // read live while the load runs
	done := make(chan struct{})
	start := time.Now()
	go func() {
		defer close(done)
		load{srv: srv, sessions: o.sessions, size: 4096, tokens: pace(lctx, rate)}.runInto(lctx, lr)
	}()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	loadDone := false
	for {
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-done:
			if !loadDone {
				loadDone = true
				run.acceptSeconds = time.Since(start).Seconds()
			}
			done = nil
			continue
		case <-tick.C:
		}
		acc := lr.accepted.Load()
		del := srv.sink.delivered.Load() - base
		run.samples = append(run.samples, sample{t: time.Since(start).Seconds(), accepted: acc, delivered: del})
		run.maxDepth = max(run.maxDepth, acc-del)
		if loadDone && del >= acc {
			run.accepted, run.drained = acc, true
			break
		}
		if loadDone && time.Since(start) > o.sustain+3*time.Minute {
			run.accepted = acc
			break
		}
	}
	if err := lr.err(); err != nil {
		log.Printf("%s: sustained run: first error: %v", srv.name, err)
	}
	run.deliverSeconds = time.Since(start).Seconds()
	if run.drained {
		run.deliverSeconds = time.Unix(0, srv.sink.last.Load()).Sub(start).Seconds()
	}
	run.acceptedPerSec = float64(run.accepted) / run.acceptSeconds
	run.deliveredPerSec = float64(run.accepted) / run.deliverSeconds
	run.cpuPer1000 = (cpuSeconds(srv.pids()...) - cpu0) / float64(run.accepted) * 1000
	return run, nil
}

// raiseFileLimit raises this process's open-files limit to n, or as far
// as the hard limit allows; the processes it starts inherit it.
func raiseFileLimit(n int) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Max < uint64(n) {
		return fmt.Errorf("the open-files hard limit is %d; the idle measurement needs %d (use a smaller -idle)", lim.Max, n)
	}
	if lim.Cur >= uint64(n) {
		return nil
	}
	lim.Cur = uint64(n)
	return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
}
