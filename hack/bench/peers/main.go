// Command peers measures the relay beside its peers on this machine, in one
// run: mailfleet (AUTH, the rate-limit sidecar on a real Redis, the durable
// queue, delivering to smtp-sink), Postfix's smtpd with its real queue
// relaying to smtp-sink, Haraka 3 (accept and discard, with and without
// AUTH) and smtp-sink itself as the ceiling.
//
// Four measurements:
//
//   - accept: 20 sessions, 4 KiB and 100 KB messages, many messages per
//     session and one per session, loaded by Postfix's smtp-source (for the
//     servers that take mail without AUTH) and by a Go load generator that
//     does STARTTLS and AUTH where the server offers them; rounds
//     interleaved, medians reported, with each server's CPU-seconds per
//     1,000 messages;
//   - sustained: a fixed offered load for a while, sampling every second
//     what was accepted and what the sink downstream received, for
//     mailfleet and Postfix;
//   - idle: many sessions opened and left idle after STARTTLS on one relay
//     process (by a process of their own), with the relay's RSS per
//     session and the accept rate of 20 active sessions before, while and
//     after they stay open;
//   - limiter: budget decisions at fixed offered rates, by a fixed number
//     of callers, from Envoy's ratelimit service and mailfleet's sidecar
//     (the same RLS request, the same redis-server), from the relay's side
//     per message and from leases, and from a gRPC server that answers at
//     once; then one run whose budgets run out (-only limiter runs this
//     part alone).
//
// -quick makes every run short: a smoke test of the harness.
//
// It writes docs/benchmarks/peers.md and PNG charts beside it (gnuplot).
// Run it from the repository root with `make bench-peers`, which installs
// what it needs (hack/install-bench-deps.sh), or:
//
//	go run ./hack/bench/peers -h
//
// It is a benchmark, not a test: it prints figures and exits 0.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

type options struct {
	out       string
	rounds    int
	sessions  int
	sizes     string
	messages  int
	onePer    int
	rate      int
	sustain   time.Duration
	idle      int
	only      string
	skipPeers string
	// limiterRates and limiterFor: the limiter measurement's offered
	// decisions per second and how long each is offered, by
	// limiterCallers at once; limiterDeny: the rate of its run whose
	// budgets run out.
	limiterRates   string
	limiterFor     time.Duration
	limiterCallers int
	limiterDeny    int
	quick          bool
	keep           bool
}

// quickFlags are the values -quick gives the flags not given: a smoke run
// of every measurement in a few minutes, figures too short to quote.
var quickFlags = map[string]string{
	"rounds": "1", "messages": "600", "one-per-session": "200", "sustain": "10s", "idle": "500",
	"limiter-rates": "1000,5000", "limiter-for": "1s",
}

func main() {
	if addr := os.Getenv(noopEnv); addr != "" {
		log.Fatal(serveNoop(addr)) // this is the no-op server noopRLS started
	}
	if spec := os.Getenv(idleEnv); spec != "" {
		log.Fatal(serveIdle(spec)) // this is the holder of idle sessions holdIdle started
	}
	var o options
	flag.StringVar(&o.out, "out", "docs/benchmarks", "directory for peers.md and the charts")
	flag.IntVar(&o.rounds, "rounds", 3, "interleaved rounds of the accept measurement")
	flag.IntVar(&o.sessions, "sessions", 20, "concurrent sessions")
	flag.StringVar(&o.sizes, "sizes", "4096,102400", "message sizes in bytes, comma-separated")
	flag.IntVar(&o.messages, "messages", 6000, "messages per accept run with many messages per session")
	flag.IntVar(&o.onePer, "one-per-session", 2000, "messages per accept run with one message per session")
	flag.IntVar(&o.rate, "rate", 0, "offered messages/s of the sustained run (0: 90% of mailfleet's median accept rate)")
	flag.DurationVar(&o.sustain, "sustain", 60*time.Second, "how long the sustained run offers its load")
	flag.IntVar(&o.idle, "idle", 10000, "idle sessions held open after STARTTLS (0 skips)")
	flag.StringVar(&o.only, "only", "accept,sustained,idle,limiter", "measurements to run")
	flag.StringVar(&o.limiterRates, "limiter-rates", "1000,5000,10000,15000", "offered budget decisions per second, comma-separated (limiter measurement)")
	flag.DurationVar(&o.limiterFor, "limiter-for", 5*time.Second, "how long each limiter is offered each rate")
	flag.IntVar(&o.limiterCallers, "limiter-callers", 64, "concurrent callers offering the limiter measurement's rates")
	flag.IntVar(&o.limiterDeny, "limiter-deny", 5000, "offered decisions/s of the limiter run whose budgets run out (0 skips)")
	flag.StringVar(&o.skipPeers, "skip", "", "servers and limiters to leave out (mailfleet, postfix, haraka, haraka-auth, smtp-sink; "+
		"envoy, sidecar, relay-sidecar, relay-leased, noop)")
	flag.BoolVar(&o.quick, "quick", false, "a smoke run: short runs for the flags not given ("+quickText()+")")
	flag.BoolVar(&o.keep, "keep", false, "keep the working directory (logs, configurations) and print where it is")
	flag.Parse()
	log.SetFlags(log.Ltime)
	if o.quick {
		if err := setQuick(); err != nil {
			log.Fatal(err)
		}
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		log.Fatal(err)
	}
}

func run(ctx context.Context, o options) error {
	work, err := os.MkdirTemp("", "mailfleet-peers-")
	if err != nil {
		return err
	}
	// smtp-sink and Postfix drop privileges; they must reach their files.
	if err := os.Chmod(work, 0o755); err != nil {
		return err
	}
	if o.keep {
		log.Printf("working directory: %s", work)
	} else {
		defer os.RemoveAll(work)
	}
	sizes, err := parseSizes(o.sizes)
	if err != nil {
		return err
	}
	// Each side of an idle session is one file: here, and in the relay,
	// which inherits the limit.
	if err := raiseFileLimit(o.idle + 1000); err != nil {
		return err
	}
	rep := &report{machine: describeMachine(), started: time.Now(), opts: o}
	lab := &lab{dir: work, procs: &procs{}}
	defer lab.procs.stopAll()

	if want(o.only, "accept") {
		if err := measureAccept(ctx, lab, o, sizes, rep); err != nil {
			return fmt.Errorf("accept: %w", err)
		}
	}
	if want(o.only, "sustained") {
		if err := measureSustained(ctx, lab, o, rep); err != nil {
			return fmt.Errorf("sustained: %w", err)
		}
	}
	if want(o.only, "idle") && o.idle > 0 {
		if err := measureIdle(ctx, lab, o, rep); err != nil {
			return fmt.Errorf("idle: %w", err)
		}
	}
	if want(o.only, "limiter") {
		if err := measureLimiter(ctx, lab, o, rep); err != nil {
			return fmt.Errorf("limiter: %w", err)
		}
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	md, err := rep.write(o.out)
	if err != nil {
		return err
	}
	log.Printf("wrote %s", filepath.Join(o.out, "peers.md"))
	fmt.Println(md)
	return nil
}

// setQuick gives the flags not set on the command line their quickFlags
// values.
func setQuick() error {
	given := map[string]bool{}
	flag.Visit(func(f *flag.Flag) { given[f.Name] = true })
	for name, v := range quickFlags {
		if !given[name] {
			if err := flag.Set(name, v); err != nil {
				return fmt.Errorf("-quick: %w", err)
			}
		}
	}
	return nil
}

func quickText() string {
	var parts []string
	for name, v := range quickFlags {
		parts = append(parts, "-"+name+" "+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, " ")
}

func want(list, name string) bool {
	for _, s := range strings.Split(list, ",") {
		if strings.TrimSpace(s) == name {
			return true
		}
	}
	return false
}

func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(f), &n); err != nil || n < 100 {
			return nil, fmt.Errorf("size %q: want a number of bytes of at least 100", f)
		}
		out = append(out, n)
	}
	return out, nil
}
