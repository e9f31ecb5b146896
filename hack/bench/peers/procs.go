package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// lab is the run's working directory and the processes it started.
type lab struct {
	dir   string
	procs *procs
	bin   string // the mailfleet binary, built once
}

// procs are the processes a run started; stopAll ends every one of them.
type procs struct {
	mu    sync.Mutex
	stops []func()
}

func (p *procs) add(stop func()) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stops = append(p.stops, stop)
}

func (p *procs) stopAll() {
	p.mu.Lock()
	stops := p.stops
	p.stops = nil
	p.mu.Unlock()
	for i := len(stops) - 1; i >= 0; i-- {
		stops[i]()
	}
}

// start runs a command in a process group of its own, its output in
// dir/<name>.log, and returns it; stop kills the group.
func (l *lab) start(name string, args ...string) (*exec.Cmd, func(), error) {
	logf, err := os.Create(filepath.Join(l.dir, name+".log"))
	if err != nil {
		return nil, nil, err
	}
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, nil, fmt.Errorf("start %s: %w", name, err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); logf.Close(); close(done) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		})
	}
	l.procs.add(stop)
	return cmd, stop, nil
}

// logTail is the end of a process's log, for an error message.
func (l *lab) logTail(name string) string {
	b, _ := os.ReadFile(filepath.Join(l.dir, name+".log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// waitListening waits until addr accepts connections.
func waitListening(addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s did not listen within %s: %w", addr, within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// cpuSeconds is the CPU time (user and system) of pid and every process
// below it, with the children they already reaped.
func cpuSeconds(roots ...int) float64 {
	children := map[int][]int{}
	entries, _ := os.ReadDir("/proc")
	stats := map[int][]string{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f := procStat(pid)
		if len(f) < 17 {
			continue
		}
		stats[pid] = f
		ppid, _ := strconv.Atoi(f[3])
		children[ppid] = append(children[ppid], pid)
	}
	var ticks float64
	seen := map[int]bool{}
	var walk func(int)
	walk = func(pid int) {
		if seen[pid] {
			return
		}
		seen[pid] = true
		if f, ok := stats[pid]; ok {
			for _, i := range []int{13, 14, 15, 16} { // utime stime cutime cstime
				v, _ := strconv.ParseFloat(f[i], 64)
				ticks += v
			}
		}
		for _, c := range children[pid] {
			walk(c)
		}
	}
	for _, r := range roots {
		walk(r)
	}
	return ticks / 100 // USER_HZ
}

// procStat splits /proc/pid/stat into its fields; the command name, in
// parentheses, may hold spaces.
func procStat(pid int) []string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return nil
	}
	s := string(b)
	end := strings.LastIndexByte(s, ')')
	if end < 0 {
		return nil
	}
	return append([]string{s[:strings.IndexByte(s, ' ')], s[:end+1]}, strings.Fields(s[end+1:])...)
}

// rssBytes is the resident set of pid.
func rssBytes(pid int) int64 {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			kb, _ := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			return kb << 10
		}
	}
	return 0
}
