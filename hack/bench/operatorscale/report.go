package main

import (
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"
)

// report is everything the benchmark prints.
type report struct {
	opts options
	cpus int

	start                       time.Time // the first create
	createDuration              time.Duration
	accountsReady, labelsReady  time.Duration
	allReady                    time.Duration
	relaySync, allPublished     time.Duration
	settle                      time.Duration // until the operator was idle, after allPublished
	rss                         memory
	requests                    requestCounts // API server requests during the scale phase
	benchRequests               requestCounts // of which the benchmark's own
	events                      requestCounts // Events in the cluster at the end of the scale phase, by type and reason
	controlPlaneCPU             time.Duration // the API server's and etcd's during the scale phase
	operatorCPU                 time.Duration // the operator's during the scale phase
	reconciles                  reconcileCounts
	profiles                    []string      // the operator's CPU profiles of the scale phase
	floors                      []floorResult // before the operator and, unless -floor-after=false, after it
	prop                        propagation
	loadStart, loadMax, loadEnd loadAvg
}

// missed reports whether any measured figure misses its target.
func (r *report) missed() bool {
	if r.allReady == 0 || r.allReady > targetAllReady || r.rss.HWMKiB > targetRSSMiB*1024 {
		return true
	}
	if len(r.floors) > 0 && r.floorRatio() > targetFloorRatio {
		return true
	}
	for _, s := range r.series() {
		if len(s.values) > 0 && slices.Max(s.values) > targetPropagation {
			return true
		}
	}
	return false
}

type series struct {
	name   string
	values []time.Duration
	target bool // the 2 s target applies
}

func (r *report) series() []series {
	p := r.prop
	return []series{
		{"key in the account's Secret", p.keyIssued, false},
		{"new account authenticates", p.add, true},
		{"new label authenticates", p.label, true},
		{"suspended account refused", p.suspend, true},
		{"resumed account authenticates", p.resume, true},
		{"deleted account gone", p.remove, true},
	}
}

func (r *report) print(w io.Writer) {
	o := r.opts
	labels := o.accounts * o.labelsPerAccount
	fmt.Fprintln(w)
	fmt.Fprintln(w, "== mailfleet operator scale benchmark ==")
	fmt.Fprintf(w, "objects:          %d SmtpAccounts + %d SmtpLabels in %d namespaces, %d create workers, 1 SmtpRelay\n",
		o.accounts, labels, o.namespaces, o.workers)
	if r.createDuration > 0 {
		fmt.Fprintf(w, "creates done:     %7.1f s (%.0f objects/s)\n", r.createDuration.Seconds(),
			float64(o.accounts+labels)/r.createDuration.Seconds())
	}
	if o.noOperator {
		fmt.Fprintln(w, "no operator:      the API server's time for the creates alone, a floor for all-Ready on this machine")
	}
	if r.allReady > 0 {
		fmt.Fprintf(w, "all Ready:        %7.1f s  %s  (accounts %.1f s, labels %.1f s; %.0f accounts/s, %.0f objects/s; seen through watches)\n",
			r.allReady.Seconds(), verdict(r.allReady <= targetAllReady, "60 s"),
			r.accountsReady.Seconds(), r.labelsReady.Seconds(),
			float64(o.accounts)/r.allReady.Seconds(), float64(o.accounts+labels)/r.allReady.Seconds())
	}
	if len(r.floors) > 0 {
		f := r.floors[0]
		fmt.Fprintf(w, "floor:            %7.1f s  a plain client's creates and the %d writes the operator must make (credentials Secrets, account and label status, %d shards), in an API server of its own; %s\n",
			r.floorDone().Seconds(), f.writes, f.shards, r.floorRuns())
		if r.allReady > 0 {
			fmt.Fprintf(w, "all Ready/floor:  %7.2f x  %s\n", r.floorRatio(), verdict(r.floorRatio() <= targetFloorRatio, fmt.Sprintf("%.1fx", targetFloorRatio)))
		}
		fmt.Fprintf(w, "  the floor's API requests: %s\n", f.requests.summary(o.accounts))
	}
	if r.controlPlaneCPU > 0 {
		fmt.Fprintf(w, "API server + etcd: %6.1f s of CPU during the scale phase", r.controlPlaneCPU.Seconds())
		for i, f := range r.floors {
			fmt.Fprintf(w, "; the floor's %s: %.1f s", floorWhen[i], f.controlPlaneCPU.Seconds())
		}
		fmt.Fprintln(w)
	}
	if r.operatorCPU > 0 {
		fmt.Fprintf(w, "operator CPU:     %7.1f s during the scale phase (%.2f ms per account)\n",
			r.operatorCPU.Seconds(), float64(r.operatorCPU.Milliseconds())/float64(o.accounts))
	}
	if len(r.reconciles) > 0 {
		fmt.Fprintf(w, "  reconciles, by controller and result: %s\n", r.reconciles.summary(o.accounts))
	}
	if len(r.profiles) > 0 {
		fmt.Fprintf(w, "  profiles: %s (go tool pprof -top DIR/cpu-*.pb.gz; -sample_index=alloc_space DIR/allocs.pb.gz)\n", filepath.Dir(r.profiles[0]))
	}
	if r.allPublished > 0 {
		fmt.Fprintf(w, "all at the relay: %7.1f s after the first create (relay source's initial sync of the shards: %v)\n",
			r.allPublished.Seconds(), r.relaySync.Round(time.Millisecond))
	}
	if r.rss.HWMKiB > 0 {
		fmt.Fprintf(w, "operator memory:  peak RSS %.0f MiB (VmHWM)  %s  sampled peak %.0f MiB, at the end %.0f MiB; CPU used %.1f s\n",
			float64(r.rss.HWMKiB)/1024, verdict(r.rss.HWMKiB <= targetRSSMiB*1024, "300 MiB"),
			float64(r.rss.PeakSampledKiB)/1024, float64(r.rss.EndKiB)/1024, r.rss.CPU.Seconds())
	}
	if total := r.requests.total(); total > 0 {
		op := r.requests.minus(r.benchRequests)
		fmt.Fprintf(w, "API requests:     %.0f during the scale phase: the benchmark's %.0f (%s), the operator's %.0f (%.2f per account)\n",
			total, r.benchRequests.total(), r.benchRequests.summary(0), op.total(), op.total()/float64(o.accounts))
		fmt.Fprintf(w, "  the operator's, by verb and resource         total  per account\n")
		keys := op.top(len(op))
		for _, k := range keys {
			fmt.Fprintf(w, "  %-42s %8.0f  %6.3f\n", k, op[k], op[k]/float64(o.accounts))
		}
		fmt.Fprintf(w, "  Events written: %.0f (POST %.0f, PATCH %.0f); in the cluster: %.0f (%s)\n",
			op["POST events"]+op["PATCH events"], op["POST events"], op["PATCH events"], r.events.total(), r.events.summary(0))
	}
	if len(r.prop.add) > 0 {
		fmt.Fprintf(w, "propagation at full scale, %d rounds, once the operator was idle (another %.1f s) (p50 / max):\n",
			len(r.prop.add), r.settle.Seconds())
		for _, s := range r.series() {
			if len(s.values) == 0 {
				continue
			}
			p50, mx := quantile(s.values, 0.5), slices.Max(s.values)
			v := ""
			if s.target {
				v = verdict(mx <= targetPropagation, "2 s")
			}
			fmt.Fprintf(w, "  %-30s %7.0f ms / %7.0f ms  %s\n", s.name, ms(p50), ms(mx), v)
		}
	}
	fmt.Fprintf(w, "machine:          %d CPUs, load average at start %s, highest 1-min during the run %.2f, at the end %s\n",
		r.cpus, r.loadStart, r.loadMax.one, r.loadEnd)
	if out, err := exec.Command("uptime").Output(); err == nil {
		fmt.Fprintf(w, "uptime:          %s\n", strings.TrimRight(string(out), "\n"))
	}
}

// floorWhen names the floor's runs.
var floorWhen = []string{"before the operator", "after it"}

// floorDone is the floor: the mean of its runs.
func (r *report) floorDone() time.Duration {
	var sum time.Duration
	for _, f := range r.floors {
		sum += f.done
	}
	return sum / time.Duration(max(1, len(r.floors)))
}

// floorRuns says how long each run of the floor took, and when its
// creates were done.
func (r *report) floorRuns() string {
	var runs []string
	for i, f := range r.floors {
		runs = append(runs, fmt.Sprintf("%s %.1f s (its creates done at %.1f s)", floorWhen[i], f.done.Seconds(), f.createDuration.Seconds()))
	}
	if len(runs) > 1 {
		return "the mean of " + strings.Join(runs, " and ")
	}
	return runs[0]
}

// floorRatio is all-Ready over the floor.
func (r *report) floorRatio() float64 {
	if r.floorDone() == 0 {
		return 0
	}
	return r.allReady.Seconds() / r.floorDone().Seconds()
}

func verdict(ok bool, target string) string {
	if ok {
		return "[ok: target " + target + "]"
	}
	return "[MISSED: target " + target + "]"
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// quantile is the nearest-rank q-quantile of ds.
func quantile(ds []time.Duration, q float64) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(q*float64(len(s))+0.999999) - 1
	return s[max(0, min(i, len(s)-1))]
}

// loadAvg is /proc/loadavg's three figures.
type loadAvg struct{ one, five, fifteen float64 }

func (l loadAvg) String() string { return fmt.Sprintf("%.2f %.2f %.2f", l.one, l.five, l.fifteen) }

func readLoadAvg() loadAvg {
	var l loadAvg
	data, err := os.ReadFile("/proc/loadavg")
	if err == nil {
		fmt.Sscanf(string(data), "%f %f %f", &l.one, &l.five, &l.fifteen)
	}
	return l
}

func cpuCount() int { return runtime.NumCPU() }

// loadSampler records the highest 1-minute load average of the run: the
// machine is shared, and the figures mean little without it.
type loadSampler struct {
	done chan struct{}
	wg   sync.WaitGroup
	mu   sync.Mutex
	max  loadAvg
}

func startLoadSampler() *loadSampler {
	s := &loadSampler{done: make(chan struct{})}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			if l := readLoadAvg(); l.one > s.peek().one {
				s.mu.Lock()
				s.max = l
				s.mu.Unlock()
			}
			select {
			case <-s.done:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *loadSampler) peek() loadAvg {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.max
}

// stop ends sampling and returns the highest and the current load.
func (s *loadSampler) stop() (highest, now loadAvg) {
	close(s.done)
	s.wg.Wait()
	return s.peek(), readLoadAvg()
}
