package main

import (
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
)

func TestBuildVersion(t *testing.T) {
	vcs := func(rev, modified string) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.26.0", Main: debug.Module{Path: "github.com/semnet/semnet", Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: rev}, {Key: "vcs.modified", Value: modified}}}
	}
	tagged := vcs("0123456789abcdef0123", "false")
	tagged.Main.Version = "v1.4.0"
	for _, c := range []struct {
		name, set string
		info      *debug.BuildInfo
		ok        bool
		want      string
		dirty     bool
	}{
		{name: "set at link time wins", set: "v1.2.3", info: tagged, ok: true, want: "v1.2.3"},
		{name: "module version", info: tagged, ok: true, want: "v1.4.0"},
		{name: "devel: the revision", info: vcs("0123456789abcdef0123", "false"), ok: true, want: "devel-0123456789ab"},
		{name: "devel and dirty", info: vcs("0123456789abcdef0123", "true"), ok: true, want: "devel-0123456789ab-dirty", dirty: true},
		{name: "no VCS record", info: &debug.BuildInfo{Main: debug.Module{Version: "(devel)"}}, ok: true, want: "dev"},
		{name: "no build info", want: "dev"},
	} {
		v := buildVersion(c.set, c.info, c.ok)
		if v.Version != c.want || v.Dirty != c.dirty {
			t.Errorf("%s: %+v, want version %q dirty %v", c.name, v, c.want, c.dirty)
		}
	}
	if s := buildVersion("", vcs("abc", "true"), true).String(); s != "semnet devel-abc-dirty (revision abc, dirty, go1.26.0)" {
		t.Errorf("String() = %q", s)
	}
}

func TestVersionCommand(t *testing.T) {
	out, err := execute(t, "version")
	if err != nil || !strings.HasPrefix(out, "semnet "+currentVersion().Version+" (") {
		t.Errorf("semnet version: %q, %v", out, err)
	}
	out, err = execute(t, "version", "-o", "json")
	var v versionInfo
	if err != nil || json.Unmarshal([]byte(out), &v) != nil || v.Version == "" || !strings.HasPrefix(v.Go, "go") {
		t.Errorf("semnet version -o json: %q, %v", out, err)
	}
	if out, err := execute(t, "--version"); err != nil || !strings.Contains(out, currentVersion().Version) {
		t.Errorf("semnet --version: %q, %v", out, err)
	}
}
