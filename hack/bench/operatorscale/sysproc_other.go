//go:build !linux

package main

import "syscall"

// childAttrs has nothing to add where there is no parent-death signal.
func childAttrs() *syscall.SysProcAttr { return nil }
