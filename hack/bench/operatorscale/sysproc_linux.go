package main

import "syscall"

// childAttrs makes the kernel kill the operator should the benchmark die
// without running its cleanup (SIGKILL, a crash), so no operator outlives it.
func childAttrs() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
