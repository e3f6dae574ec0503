package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/spf13/cobra"
)

// version is set at release build time with -ldflags "-X main.version=v1.2.3" (make
// release). Left empty, the build's own record stands in: see buildVersion.
var version string

// versionInfo says which semnet this is.
type versionInfo struct {
	Version  string `json:"version"`
	Revision string `json:"revision,omitempty"` // VCS commit the binary was built from
	Dirty    bool   `json:"dirty,omitempty"`    // built with uncommitted changes
	Time     string `json:"time,omitempty"`     // commit time
	Go       string `json:"go"`
}

func currentVersion() versionInfo {
	info, ok := debug.ReadBuildInfo()
	return buildVersion(version, info, ok)
}

// buildVersion is the version set at link time or, without one, the module version the
// go command recorded (a tagged module when installed with go install module@v1.2.3, a
// pseudo-version when built in a checkout), or else the VCS revision ("devel-<12 hex>",
// with "-dirty" for uncommitted changes), or "dev" when the build recorded nothing
// (go run, go test).
func buildVersion(set string, info *debug.BuildInfo, ok bool) versionInfo {
	v := versionInfo{Version: set, Go: runtime.Version()}
	if ok && info != nil {
		v.Go = info.GoVersion
		for _, s := range info.Settings {
			switch s.Key {
			case "vcs.revision":
				v.Revision = s.Value
			case "vcs.modified":
				v.Dirty = s.Value == "true"
			case "vcs.time":
				v.Time = s.Value
			}
		}
	}
	switch {
	case v.Version != "":
	case ok && info != nil && info.Main.Version != "" && info.Main.Version != "(devel)":
		v.Version = info.Main.Version
	case v.Revision != "":
		v.Version = "devel-" + v.Revision[:min(12, len(v.Revision))]
		if v.Dirty {
			v.Version += "-dirty"
		}
	default:
		v.Version = "dev"
	}
	return v
}

func newVersionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the semnet version",
		Long: `version prints the version of this binary: the release it was built as (make release
sets it from git describe), or else what the Go toolchain recorded (module version, VCS
revision and whether the tree had uncommitted changes), and the Go version it was built
with. -o json prints the same as an object.`,
		Example: `  semnet version
  semnet version -o json`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			v := currentVersion()
			switch output {
			case "json":
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(v)
			case "text":
				fmt.Fprintln(cmd.OutOrStdout(), v)
				return nil
			}
			return fmt.Errorf("--output %q: want text or json", output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// String is the one-line form: "semnet v1.2.3 (revision abc..., dirty, go1.26.0)".
func (v versionInfo) String() string {
	s := "semnet " + v.Version + " ("
	if v.Revision != "" {
		s += "revision " + v.Revision
		if v.Dirty {
			s += ", dirty"
		}
		s += ", "
	}
	return s + v.Go + ")"
}
