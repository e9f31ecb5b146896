// Command pause is the pod sandbox's process for the single-node test cluster
// (hack/cluster): the image mailfleet.test/pause:3.10 that containerd starts
// first in every pod, to hold the pod's namespaces open. The project builds
// every image from source, so this replaces the upstream pause image.
//
// It does nothing until SIGINT or SIGTERM, then exits 0. As PID 1 of the pod
// (when the pod shares its process namespace) it must also reap zombies, so
// orphaned children that re-parent to it do not pile up; SIGCHLD wakes it to
// collect them.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		reap()
	}
}

// reap collects every child that has exited, without blocking.
func reap() {
	for {
		var status syscall.WaitStatus
		pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
		if err == syscall.EINTR {
			continue
		}
		if pid <= 0 || err != nil {
			return
		}
	}
}
