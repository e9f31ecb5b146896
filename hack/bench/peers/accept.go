package main

import (
	"context"
	"fmt"
	"log"
	"os/exec"
	"slices"
	"strconv"
	"time"
)

// acceptKey names one cell of the accept table.
type acceptKey struct {
	server, loader string
	size           int
	onePer         bool
}

// acceptRun is one measured run.
type acceptRun struct {
	rate       float64 // messages accepted per second
	cpuPer1000 float64 // server CPU-seconds per 1,000 messages, delivery included for relays
	// delivered is, for a relay, the messages over the time from the
	// load's start until its sink had every one of them.
	delivered float64
}

// startServers starts every server not skipped, in a fixed order.
func startServers(ctx context.Context, l *lab, skip string) ([]*server, error) {
	starters := []struct {
		name  string
		start func() (*server, error)
	}{
		{"mailfleet", func() (*server, error) { return l.mailfleet(ctx) }},
		{"postfix", l.postfix},
		{"haraka", func() (*server, error) { return l.haraka(false) }},
		{"haraka-auth", func() (*server, error) { return l.haraka(true) }},
		{"smtp-sink", l.sinkServer},
	}
	var out []*server
	for _, s := range starters {
		if want(skip, s.name) {
			continue
		}
		srv, err := s.start()
		if err != nil {
			return nil, fmt.Errorf("start %s: %w", s.name, err)
		}
		log.Printf("%s listening on %s", s.name, srv.addr)
		out = append(out, srv)
	}
	return out, nil
}

// measureAccept runs every loader against every server it can load, in
// rounds, each round in an order rotated from the last so that no server
// always runs first.
func measureAccept(ctx context.Context, l *lab, o options, sizes []int, rep *report) error {
	servers, err := startServers(ctx, l, o.skipPeers)
	if err != nil {
		return err
	}
	rep.servers = servers
	defer only(servers, nil)
	rep.accept = map[acceptKey][]acceptRun{}
	sent := map[string]int64{} // accepted so far, per relaying server
	for round := range o.rounds {
		for _, size := range sizes {
			for _, onePer := range []bool{false, true} {
				n := o.messages
				if onePer {
					n = o.onePer
				}
				if size > 16<<10 {
					n /= 2
				}
				for i := range servers {
					srv := servers[(i+round)%len(servers)]
					for _, loader := range []string{"go", "smtp-source"} {
						if loader == "smtp-source" && srv.auth {
							continue // smtp-source does not log in
						}
						only(servers, srv)
						run, err := acceptOnce(ctx, srv, loader, o.sessions, size, n, onePer, sent)
						if err != nil {
							return fmt.Errorf("%s with %s, %d bytes: %w", srv.name, loader, size, err)
						}
						k := acceptKey{srv.name, loader, size, onePer}
						rep.accept[k] = append(rep.accept[k], run)
						log.Printf("round %d %-11s %-11s %6d B one-per-session=%-5v %8.0f msgs/s %6.2f CPU-s/1000",
							round+1, srv.name, loader, size, onePer, run.rate, run.cpuPer1000)
					}
				}
			}
		}
	}
	return nil
}

// acceptOnce loads srv with n messages and, for a relay, waits until its
// sink has them all, so that the next run starts with an empty queue and
// the CPU time counts delivery too.
func acceptOnce(ctx context.Context, srv *server, loader string, sessions, size, n int, onePer bool, sent map[string]int64) (acceptRun, error) {
	cpu0 := cpuSeconds(srv.pids()...)
	start := time.Now()
	var accepted int64
	var elapsed time.Duration
	if loader == "go" {
		res := load{srv: srv, sessions: sessions, size: size, messages: n, onePerConn: onePer}.run(ctx)
		if err := res.err(); err != nil {
			return acceptRun{}, err
		}
		accepted, elapsed = res.accepted.Load(), res.elapsed
	} else {
		args := []string{"-s", strconv.Itoa(sessions), "-m", strconv.Itoa(n), "-l", strconv.Itoa(size),
			"-f", "app@bench.example", "-t", "rcpt@sink.example", "-M", "loader.bench.test"}
		if !onePer {
			args = append(args, "-d")
		}
		if out, err := exec.CommandContext(ctx, postfixTool("smtp-source"), append(args, srv.addr)...).CombinedOutput(); err != nil {
			return acceptRun{}, fmt.Errorf("smtp-source: %v\n%s", err, out)
		}
		accepted, elapsed = int64(n), time.Since(start)
	}
	if accepted == 0 {
		return acceptRun{}, fmt.Errorf("no message accepted")
	}
	var delivered float64
	if srv.sink != nil {
		sent[srv.name] += accepted
		if err := waitDelivered(ctx, srv.sink, sent[srv.name], 5*time.Minute); err != nil {
			return acceptRun{}, err
		}
		// Until the last message reached the sink, not until the poll
		// above saw it.
		delivered = float64(accepted) / time.Unix(0, srv.sink.last.Load()).Sub(start).Seconds()
	}
	cpu := cpuSeconds(srv.pids()...) - cpu0
	return acceptRun{rate: float64(accepted) / elapsed.Seconds(), cpuPer1000: cpu / float64(accepted) * 1000, delivered: delivered}, nil
}

func waitDelivered(ctx context.Context, s *sink, want int64, within time.Duration) error {
	deadline := time.Now().Add(within)
	for s.delivered.Load() < want {
		if time.Now().After(deadline) {
			return fmt.Errorf("the sink has %d of %d messages after %s", s.delivered.Load(), want, within)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
	return nil
}

// median of the runs' rates and CPU costs, each on its own.
func median(runs []acceptRun) acceptRun {
	rates := make([]float64, len(runs))
	cpus := make([]float64, len(runs))
	delivered := make([]float64, len(runs))
	for i, r := range runs {
		rates[i], cpus[i], delivered[i] = r.rate, r.cpuPer1000, r.delivered
	}
	return acceptRun{rate: med(rates), cpuPer1000: med(cpus), delivered: med(delivered)}
}

func med(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}
