package main

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// rssSampleInterval is how often the operator's resident set is sampled.
const rssSampleInterval = 500 * time.Millisecond

// errNoProc is returned where /proc cannot be read (not Linux).
var errNoProc = errors.New("/proc/<pid>/status unavailable")

// operatorProcess is the `mailfleet operator` subprocess and its memory
// samples.
type operatorProcess struct {
	binary string

	cmd     *exec.Cmd
	exited  chan struct{} // closed when the process has exited
	waitErr error
	logFile *os.File

	stopSampling chan struct{}
	sampling     sync.WaitGroup
	mu           sync.Mutex
	peakRSSKiB   int64 // highest VmRSS sampled
}

// memory is what the benchmark reports of the operator's memory and CPU.
type memory struct {
	PeakSampledKiB int64         // highest VmRSS seen every rssSampleInterval
	HWMKiB         int64         // VmHWM: the kernel's own peak, read at the end
	EndKiB         int64         // VmRSS at the end, everything idle
	CPU            time.Duration // user + system time the operator used
}

// start runs the binary with KUBECONFIG pointing at envtest; ctrl.GetConfig
// in the operator reads it. Its output goes to logPath.
func (p *operatorProcess) start(ctx context.Context, kubeconfig, logPath string, args []string) error {
	f, err := os.Create(logPath)
	if err != nil {
		return fmt.Errorf("operator log: %w", err)
	}
	p.logFile = f
	// Not CommandContext: the process is ended by stop, with SIGTERM first.
	p.cmd = exec.Command(p.binary, args...)
	p.cmd.Env = append(os.Environ(), "KUBECONFIG="+kubeconfig)
	p.cmd.Stdout, p.cmd.Stderr = f, f
	p.cmd.SysProcAttr = childAttrs()
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", p.binary, err)
	}
	p.exited = make(chan struct{})
	go func() {
		p.waitErr = p.cmd.Wait()
		close(p.exited)
	}()
	p.stopSampling = make(chan struct{})
	p.sampling.Add(1)
	go p.sample()
	fmt.Fprintf(os.Stderr, "operator started (pid %d), log %s\n", p.cmd.Process.Pid, logPath)
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-p.exited:
		return p.exitError()
	case <-time.After(200 * time.Millisecond):
		// A bad flag or config fails at once; past that it is running.
		return nil
	}
}

// running returns an error once the operator has exited.
func (p *operatorProcess) running() error {
	select {
	case <-p.exited:
		return p.exitError()
	default:
		return nil
	}
}

func (p *operatorProcess) exitError() error {
	return fmt.Errorf("operator exited early (%v); see its log", p.waitErr)
}

func (p *operatorProcess) pid() int { return p.cmd.Process.Pid }

// sample records the highest VmRSS until stopped.
func (p *operatorProcess) sample() {
	defer p.sampling.Done()
	t := time.NewTicker(rssSampleInterval)
	defer t.Stop()
	for {
		if st, err := procStatus(p.pid()); err == nil {
			p.mu.Lock()
			p.peakRSSKiB = max(p.peakRSSKiB, st["VmRSS"])
			p.mu.Unlock()
		}
		select {
		case <-p.stopSampling:
			return
		case <-p.exited:
			return
		case <-t.C:
		}
	}
}

// rssMiB is the latest sample's VmRSS, for progress lines.
func (p *operatorProcess) rssMiB() float64 {
	st, err := procStatus(p.pid())
	if err != nil {
		return 0
	}
	return float64(st["VmRSS"]) / 1024
}

// final reads the operator's peak and current memory and CPU time while it
// still runs.
func (p *operatorProcess) final() (memory, error) {
	if err := p.running(); err != nil {
		return memory{}, err
	}
	st, err := procStatus(p.pid())
	if err != nil {
		return memory{}, err
	}
	p.mu.Lock()
	m := memory{PeakSampledKiB: max(p.peakRSSKiB, st["VmRSS"]), HWMKiB: st["VmHWM"], EndKiB: st["VmRSS"]}
	p.mu.Unlock()
	m.CPU, _ = procCPU(p.pid())
	return m, nil
}

// stop ends the operator: SIGTERM for a graceful shutdown, SIGKILL if it
// does not exit within 15 s.
func (p *operatorProcess) stop() error {
	if p.cmd == nil || p.cmd.Process == nil {
		return nil
	}
	defer p.logFile.Close()
	if p.stopSampling != nil {
		close(p.stopSampling)
		p.sampling.Wait()
	}
	select {
	case <-p.exited:
		return nil
	default:
	}
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return fmt.Errorf("signal operator: %w", err)
	}
	select {
	case <-p.exited:
		return nil
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.exited
		return errors.New("operator ignored SIGTERM for 15 s; killed it")
	}
}

// procStatus reads the kB fields (VmRSS, VmHWM, …) of /proc/<pid>/status.
func procStatus(pid int) (map[string]int64, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoProc, err)
	}
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		name, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok || !strings.HasSuffix(rest, " kB") {
			continue
		}
		if v, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(rest, " kB")), 10, 64); err == nil {
			out[name] = v
		}
	}
	return out, nil
}

// procCPU is the user + system time of a process, from /proc/<pid>/stat.
func procCPU(pid int) (time.Duration, error) {
	st, err := procStat(pid)
	return st.cpu, err
}

// stat is what the benchmark reads of /proc/<pid>/stat.
type stat struct {
	command string
	parent  int
	cpu     time.Duration // user + system
}

func procStat(pid int) (stat, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return stat{}, fmt.Errorf("%w: %v", errNoProc, err)
	}
	// The command name, in parentheses, may hold spaces: count fields
	// after its closing parenthesis. The parent is field 4, utime and
	// stime are fields 14 and 15.
	open, i := bytes.IndexByte(data, '('), bytes.LastIndexByte(data, ')')
	if open < 0 || i < open {
		return stat{}, errors.New("unreadable /proc/<pid>/stat")
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return stat{}, errors.New("short /proc/<pid>/stat")
	}
	parent, err0 := strconv.Atoi(f[1])
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err0, err1, err2); err != nil {
		return stat{}, fmt.Errorf("/proc/<pid>/stat: %w", err)
	}
	// USER_HZ is 100 on every Linux the benchmark runs on.
	return stat{command: string(data[open+1 : i]), parent: parent, cpu: time.Duration(utime+stime) * 10 * time.Millisecond}, nil
}

// controlPlaneCPU is the CPU time used so far by the API server and etcd
// that this process started (envtest's), or 0 where /proc cannot say.
func controlPlaneCPU() time.Duration {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return 0
	}
	var total time.Duration
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		st, err := procStat(pid)
		if err == nil && st.parent == os.Getpid() && (st.command == "kube-apiserver" || st.command == "etcd") {
			total += st.cpu
		}
	}
	return total
}
