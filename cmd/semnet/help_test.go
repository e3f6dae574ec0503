package main

import (
	"testing"

	"github.com/spf13/cobra"
)

// TestEveryCommandIsDocumented walks the command tree: every command has a Short line
// and a Long description (what `semnet help CMD` shows as its manual), and every ctl
// command that does something has examples.
func TestEveryCommandIsDocumented(t *testing.T) {
	var walk func(c *cobra.Command, inCtl bool)
	n := 0
	walk = func(c *cobra.Command, inCtl bool) {
		n++
		inCtl = inCtl || c.Name() == "ctl"
		if c.Short == "" {
			t.Errorf("%q has no Short", c.CommandPath())
		}
		if c.Long == "" {
			t.Errorf("%q has no Long", c.CommandPath())
		}
		if inCtl && !c.HasSubCommands() && c.Example == "" {
			t.Errorf("%q has no Example", c.CommandPath())
		}
		for _, sub := range c.Commands() {
			walk(sub, inCtl)
		}
	}
	walk(newRootCommand(), false)
	if n < 25 {
		t.Errorf("walked %d commands: is the tree all there?", n)
	}
}
