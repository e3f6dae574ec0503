package main

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func newRootCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "semnet",
		Short: "Semantic addressing for edge platforms",
		Long: `semnet gives every service stable virtual addresses whose meaning picks the replica:
a Service IP per balancing policy (Round Robin, Closest), an Instance IP per replica,
in IPv4 and IPv6. It is a drop-in for the Oakestra networking control plane.

Every flag can also be set with an environment variable SEMNET_<FLAG>, e.g.
SEMNET_TOKEN for --token or SEMNET_MONGO_URI for --mongo-uri.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Version:       currentVersion().Version,
	}
	cmd.AddCommand(newRootServiceCommand(), newClusterCommand(), newNodeCommand(), newUpCommand(), newVersionCommand(), newProbeCommand(), newDemoCommand(), newCtlCommand())
	return cmd
}

// envPrefix is the prefix of the environment variable behind every flag.
const envPrefix = "SEMNET_"

func envName(flag string) string {
	return envPrefix + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// bindEnv documents each flag's environment variable in --help and, before the command
// runs, fills every flag not given on the command line from its variable.
func bindEnv(cmd *cobra.Command) {
	annotateEnv(cmd.Flags())
	prev := cmd.PreRunE
	cmd.PreRunE = func(c *cobra.Command, args []string) error {
		err := fillFromEnv(c.Flags(), os.LookupEnv)
		if err == nil {
			// Before the command's own checks, which would trip over the missing value.
			err = c.ValidateRequiredFlags()
		}
		if err == nil && prev != nil {
			err = prev(c, args)
		}
		return err
	}
}

// annotateEnv appends each flag's environment variable to its usage.
func annotateEnv(fs *pflag.FlagSet) {
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Name != "help" {
			f.Usage += fmt.Sprintf(" [env %s]", envName(f.Name))
		}
	})
}

// fillFromEnv sets every flag of fs not given on the command line from its environment
// variable, as lookup finds it.
func fillFromEnv(fs *pflag.FlagSet, lookup func(string) (string, bool)) error {
	var err error
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Changed || f.Name == "help" || err != nil {
			return
		}
		if v, ok := lookup(envName(f.Name)); ok {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment %s=%q: %w", envName(f.Name), v, e)
			}
		}
	})
	return err
}

// checkConfig is a PreRunE that builds a command's configuration into dst: it is
// checked before anything starts, and the compose test can check it without running.
func checkConfig[T any](dst *T, build func() (T, error)) func(*cobra.Command, []string) error {
	return func(*cobra.Command, []string) error {
		var err error
		*dst, err = build()
		return err
	}
}

// logFlags are the logging flags every long-running command has.
type logFlags struct {
	level  string
	format string
}

func (l *logFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&l.level, "log-level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&l.format, "log-format", "text", "log format: text or json")
}

func (l *logFlags) logger(w io.Writer) (*slog.Logger, error) {
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(l.level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", l.level)
	}
	opt := &slog.HandlerOptions{Level: lvl}
	switch l.format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opt)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opt)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", l.format)
}
