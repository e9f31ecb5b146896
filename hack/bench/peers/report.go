package main

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"
)

// report gathers the figures and writes peers.md and the charts.
type report struct {
	machine   string
	started   time.Time
	opts      options
	servers   []*server
	accept    map[acceptKey][]acceptRun
	sustained []*sustainedRun
	idle      *idleResult
	limiter   []limiterRun
}

// describeMachine names the CPU, its cores, memory and kernel.
func describeMachine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
		f.Close()
	}
	mem := ""
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kb int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(b), "\n", 2)[0], "MemTotal:"), "%d", &kb)
		mem = fmt.Sprintf(", %d GiB", kb>>20)
	}
	kernel, _ := exec.Command("uname", "-r").Output()
	return fmt.Sprintf("%s, %d cores%s, Linux %s, %s", model, runtime.NumCPU(), mem, strings.TrimSpace(string(kernel)), runtime.Version())
}

func (r *report) write(dir string) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "# mailfleet beside its peers\n\n")
	fmt.Fprintf(&b, "Made by `make bench-peers` (`go run ./hack/bench/peers %s`) on %s.\n\n",
		r.flags(), r.started.UTC().Format("2006-01-02 15:04 UTC"))
	fmt.Fprintf(&b, "Machine: %s. Everything runs on this one machine over loopback: servers, sinks and loaders share its cores.\n\n", r.machine)
	b.WriteString(serversText)
	if len(r.accept) > 0 {
		r.writeAccept(&b)
	}
	if len(r.sustained) > 0 {
		if err := r.writeSustained(&b, dir); err != nil {
			return "", err
		}
	}
	if r.idle != nil {
		r.writeIdle(&b)
	}
	if len(r.limiter) > 0 {
		r.writeLimiter(&b)
	}
	out := b.String()
	return out, os.WriteFile(filepath.Join(dir, "peers.md"), []byte(out), 0o644)
}

func (r *report) flags() string {
	o := r.opts
	f := fmt.Sprintf("-rounds %d -sessions %d -sizes %s -messages %d -one-per-session %d -sustain %s -idle %d -only %s "+
		"-limiter-rates %s -limiter-for %s -limiter-callers %d -limiter-deny %d",
		o.rounds, o.sessions, o.sizes, o.messages, o.onePer, o.sustain, o.idle, o.only,
		o.limiterRates, o.limiterFor, o.limiterCallers, o.limiterDeny)
	if o.skipPeers != "" {
		f += " -skip " + o.skipPeers
	}
	return f
}

const serversText = `Servers:

- **mailfleet**: ` + "`mailfleet relay`" + ` with STARTTLS and AUTH LOGIN, every message's budget asked of
  the rate-limit sidecar (` + "`mailfleet ratelimit`" + `) counting in a real redis-server, the embedded
  JetStream queue synced before each 250, delivering to a smtp-sink; log level info.
- **postfix**: a private Postfix instance: smtpd with its real queue (synced before each 250),
  relaying from loopback to a smtp-sink through smtp(8) with its connection cache; STARTTLS
  offered, no AUTH (Postfix needs Cyrus or Dovecot for it); logging to a file.
- **haraka**: Haraka 3 with one process per core and a plugin that accepts every recipient and
  discards every message after DATA (nothing queued, nothing delivered); its shipped log level.
  **haraka-auth** adds STARTTLS and AUTH from a flat file, and the loader logs in.
- **smtp-sink**: Postfix's smtp-sink: reads and throws away; the ceiling of the loaders and the machine.

Loaders: **go** is this harness's own (20 sessions; STARTTLS and AUTH LOGIN where the server is set up for them,
MAIL/RCPT/DATA pipelined); **smtp-source** is Postfix's (no TLS, no AUTH, so not for mailfleet and
haraka-auth). Rates are medians of the rounds, which are interleaved; CPU is the server's own
processes' user and system time per 1,000 messages (for the relays, delivery and the sidecar and
Redis included, counted until the sink has every message).

`

func (r *report) writeAccept(b *strings.Builder) {
	var sizes []int
	for k := range r.accept {
		if !slices.Contains(sizes, k.size) {
			sizes = append(sizes, k.size)
		}
	}
	slices.Sort(sizes)
	b.WriteString("## Accepting\n\nMessages accepted per second (CPU-seconds per 1,000 messages).\n\n")
	b.WriteString("| server | loader |")
	for _, size := range sizes {
		fmt.Fprintf(b, " %s, many per session | %s, one per session |", sizeName(size), sizeName(size))
	}
	b.WriteString("\n|---|---|" + strings.Repeat("---:|---:|", len(sizes)) + "\n")
	for _, srv := range r.servers {
		for _, loader := range []string{"go", "smtp-source"} {
			if _, ok := r.accept[acceptKey{srv.name, loader, sizes[0], false}]; !ok {
				continue
			}
			fmt.Fprintf(b, "| %s | %s |", srv.name, loader)
			cells(b, sizes, func(size int, one bool) string {
				m := median(r.accept[acceptKey{srv.name, loader, size, one}])
				return fmt.Sprintf("%.0f (%.2f)", m.rate, m.cpuPer1000)
			})
		}
	}
	b.WriteString("\nRatios of mailfleet's median rate to each peer's, with the go loader:\n\n| peer |")
	for _, size := range sizes {
		fmt.Fprintf(b, " %s, many | %s, one |", sizeName(size), sizeName(size))
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|---:|", len(sizes)) + "\n")
	for _, srv := range r.servers {
		if srv.name == "mailfleet" {
			continue
		}
		fmt.Fprintf(b, "| mailfleet / %s |", srv.name)
		cells(b, sizes, func(size int, one bool) string {
			mf := median(r.accept[acceptKey{"mailfleet", "go", size, one}]).rate
			return ratio(mf, median(r.accept[acceptKey{srv.name, "go", size, one}]).rate)
		})
	}
	b.WriteString("\n")
	r.writeDelivered(b, sizes)
}

// writeDelivered is the relays' side of the accept runs: how fast what
// they accepted reached their sink.
func (r *report) writeDelivered(b *strings.Builder, sizes []int) {
	b.WriteString("## Delivering\n\nFor the servers that relay (go loader): messages per second from the start of a run until the " +
		"relay's sink had every one of them, accepting and delivering together (medians of the rounds).\n\n| server |")
	for _, size := range sizes {
		fmt.Fprintf(b, " %s, many | %s, one |", sizeName(size), sizeName(size))
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|---:|", len(sizes)) + "\n")
	var relays []string
	for _, srv := range r.servers {
		if srv.sink == nil {
			continue
		}
		relays = append(relays, srv.name)
		fmt.Fprintf(b, "| %s |", srv.name)
		cells(b, sizes, func(size int, one bool) string {
			return fmt.Sprintf("%.0f", median(r.accept[acceptKey{srv.name, "go", size, one}]).delivered)
		})
	}
	for _, peer := range relays {
		if peer == "mailfleet" || !slices.Contains(relays, "mailfleet") {
			continue
		}
		fmt.Fprintf(b, "| mailfleet / %s |", peer)
		cells(b, sizes, func(size int, one bool) string {
			mf := median(r.accept[acceptKey{"mailfleet", "go", size, one}]).delivered
			return ratio(mf, median(r.accept[acceptKey{peer, "go", size, one}]).delivered)
		})
	}
	b.WriteString("\n")
}

// cells ends a table row with one cell per size and session mode.
func cells(b *strings.Builder, sizes []int, cell func(size int, onePer bool) string) {
	for _, size := range sizes {
		for _, one := range []bool{false, true} {
			fmt.Fprintf(b, " %s |", cell(size, one))
		}
	}
	b.WriteString("\n")
}

func (r *report) writeSustained(b *strings.Builder, dir string) error {
	fmt.Fprintf(b, "## Sustained delivery\n\nA fixed offered load (go loader, 20 sessions, 4 KiB, many per session) for %s; "+
		"then until the sink downstream has every accepted message. Delivered/s is the accepted messages over the time from the start until the last one reached the sink.\n\n", r.opts.sustain)
	b.WriteString("| server | offered/s | accepted/s | delivered/s | delivered / accepted | max depth | drained | CPU-s per 1,000 |\n|---|---:|---:|---:|---:|---:|---|---:|\n")
	for _, s := range r.sustained {
		fmt.Fprintf(b, "| %s | %d | %.0f | %.0f | %.0f%% | %d | %v | %.2f |\n", s.server, s.offered, s.acceptedPerSec,
			s.deliveredPerSec, 100*s.deliveredPerSec/s.acceptedPerSec, s.maxDepth, s.drained, s.cpuPer1000)
	}
	if err := r.plotSustained(dir); err != nil {
		return err
	}
	b.WriteString("\n![delivered per second](sustained-rate.png)\n\n![queue depth](sustained-depth.png)\n\n")
	return nil
}

func (r *report) writeIdle(b *strings.Builder) {
	i := r.idle
	fmt.Fprintf(b, "## Many clients at once\n\n%d sessions opened to one relay process (STARTTLS and EHLO, then idle) in %.1f s, "+
		"held by a process of their own. The relay's RSS went from %d MiB to %d MiB: **%.1f KiB per idle session**.\n\n",
		i.sessions, i.openSeconds, i.rssBefore>>20, i.rssWith>>20, i.perSessionKiB())
	fmt.Fprintf(b, "%d active sessions (4 KiB, many per session, 4,000 messages a run, median of %d runs) were accepted at "+
		"%.0f msgs/s before the idle sessions opened, %.0f while they were open and %.0f after they closed: "+
		"**%.2f×** the mean of before and after (runs: %s; %s; %s).\n\n",
		r.opts.sessions, len(i.with), medianOf(i.before), medianOf(i.with), medianOf(i.after), i.ratio(),
		rates(i.before), rates(i.with), rates(i.after))
}

func rates(v []float64) string {
	s := make([]string, len(v))
	for k, x := range v {
		s[k] = fmt.Sprintf("%.0f", x)
	}
	return strings.Join(s, ", ")
}

// plotSustained draws the per-second delivered rate and the queue depth
// with gnuplot.
func (r *report) plotSustained(dir string) error {
	var script strings.Builder
	var rate, depth []string
	for _, s := range r.sustained {
		data := filepath.Join(os.TempDir(), "mailfleet-sustained-"+s.server+".dat")
		var d strings.Builder
		d.WriteString("# t accepted delivered delivered_per_s depth\n")
		var prev sample
		for _, x := range s.samples {
			fmt.Fprintf(&d, "%.1f %d %d %d %d\n", x.t, x.accepted, x.delivered, x.delivered-prev.delivered, x.accepted-x.delivered)
			prev = x
		}
		if err := os.WriteFile(data, []byte(d.String()), 0o644); err != nil {
			return err
		}
		defer os.Remove(data)
		rate = append(rate, fmt.Sprintf("%q using 1:4 with lines lw 2 title '%s delivered/s'", data, s.server))
		depth = append(depth, fmt.Sprintf("%q using 1:5 with lines lw 2 title '%s'", data, s.server))
	}
	fmt.Fprintf(&script, "set terminal pngcairo size 900,420\nset grid\nset key top right\nset xlabel 'seconds'\n")
	fmt.Fprintf(&script, "set output %q\nset ylabel 'messages/s'\nset title 'Delivered per second at a fixed offered load of %d/s'\nplot %s\n",
		filepath.Join(dir, "sustained-rate.png"), r.sustained[0].offered, strings.Join(rate, ", "))
	fmt.Fprintf(&script, "set output %q\nset ylabel 'messages'\nset title 'Queue depth (accepted, not yet delivered)'\nplot %s\n",
		filepath.Join(dir, "sustained-depth.png"), strings.Join(depth, ", "))
	cmd := exec.Command("gnuplot")
	cmd.Stdin = strings.NewReader(script.String())
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("gnuplot (hack/install-bench-deps.sh installs it): %v\n%s", err, out)
	}
	return nil
}

func sizeName(n int) string {
	if n%1024 == 0 {
		return fmt.Sprintf("%d KiB", n/1024)
	}
	return fmt.Sprintf("%d KB", n/1000)
}

func ratio(a, b float64) string {
	if b == 0 {
		return "–"
	}
	return fmt.Sprintf("%.2f×", a/b)
}
