// Package nsthread runs code on an OS thread switched into another network namespace,
// safely: the node uses it to configure an instance's namespace, tests to create sockets
// inside the namespaces they build.
//
// A network namespace belongs to a thread, not to a process, so the switch must stay on
// one locked thread, and a thread that cannot be switched back must never be reused:
// it stays locked and the Go runtime ends it with its goroutine.
// (netlink.NewHandleAt and netns.Do unlock it even then.)
package nsthread

import (
	"errors"
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// ErrGoexit reports that the function given to Do ended its goroutine
// (runtime.Goexit, as t.FailNow does) instead of returning.
var ErrGoexit = errors.New("nsthread: the function called runtime.Goexit (t.Fatal or t.FailNow?); return an error instead")

// Do runs f on an OS thread switched into ns and returns f's error. f runs on a
// goroutine of its own, locked to that thread; goroutines f starts run elsewhere and are
// not in the namespace. Sockets and netlink handles f creates keep the namespace after
// the thread switches back. A panic in f is raised again in the caller once the thread
// is back in its own namespace.
func Do(ns netns.NsHandle, f func() error) error { return run(ns, true, f) }

// run runs f on a locked thread, switched into ns when enter is set, and switches the
// thread back to its own namespace afterwards (f may have moved it).
func run(ns netns.NsHandle, enter bool, f func() error) error {
	type result struct {
		err      error
		panic    any
		panicked bool
	}
	done := make(chan result, 1)
	go func() {
		res := result{err: ErrGoexit}
		defer func() { done <- res }()

		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			res.err = fmt.Errorf("nsthread: open this thread's network namespace: %w", err)
			return
		}
		defer orig.Close()
		if enter {
			if err := netns.Set(ns); err != nil {
				runtime.UnlockOSThread() // setns failed: the thread never left
				res.err = fmt.Errorf("nsthread: enter network namespace: %w", err)
				return
			}
		}
		defer func() {
			if v := recover(); v != nil {
				res.panic, res.panicked = v, true
			}
			if err := netns.Set(orig); err != nil {
				res.err = errors.Join(res.err, fmt.Errorf("nsthread: return to the thread's network namespace (the thread is discarded): %w", err))
				return // still locked: the runtime ends the thread with this goroutine
			}
			runtime.UnlockOSThread()
		}()
		res.err = f()
	}()
	res := <-done
	if res.panicked {
		panic(res.panic)
	}
	return res.err
}

// New creates a network namespace with lo up and returns a handle to it; the calling
// goroutine's thread is untouched. The namespace has no name: it lives while the handle
// is open or a process or socket is inside it, so a crash leaks nothing. Start a process
// inside it with Do(ns, cmd.Start).
func New() (netns.NsHandle, error) {
	var ns netns.NsHandle
	err := run(netns.None(), false, func() error {
		var err error
		// netns.New unshares this thread into the new namespace; do moves it back.
		ns, err = netns.New()
		if err != nil {
			return fmt.Errorf("nsthread: new network namespace: %w", err)
		}
		lo, err := netlink.LinkByName("lo")
		if err == nil {
			err = netlink.LinkSetUp(lo)
		}
		if err != nil {
			ns.Close()
			return fmt.Errorf("nsthread: set lo up in the new namespace: %w", err)
		}
		return nil
	})
	return ns, err
}
