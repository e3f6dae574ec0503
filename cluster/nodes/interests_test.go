package nodes

import (
	"slices"
	"testing"
)

func TestInterests(t *testing.T) {
	in := newInterests()
	const job = "a.b.c.d"
	if !in.query("w1", job, job) {
		t.Fatal("the first query of a job is not fresh")
	}
	if in.query("w1", "10.30.0.1", job) || in.query("w2", "10.30.0.1", job) {
		t.Fatal("a query of a job nodes need already is fresh")
	}
	keys := in.keys(job)
	slices.Sort(keys)
	if !slices.Equal(keys, []string{"10.30.0.1", job}) {
		t.Fatalf("keys %v", keys)
	}
	if j, unused := in.remove("w1", "10.30.0.1"); j != job || unused {
		t.Fatalf("w2 still uses the IP key: %q %v", j, unused)
	}
	if _, unused := in.remove("w1", job); unused {
		t.Fatal("w2 still uses the job through its IP")
	}
	if in.deploy("w3", job) {
		t.Fatal("deploying a job nodes query is fresh")
	}
	if gone := in.dropNode("w2"); len(gone) != 0 {
		t.Fatalf("w3 runs the job, yet dropping w2 reported %v unused", gone)
	}
	if in.unused(job) {
		t.Fatal("unused while w3 runs it")
	}
	if !in.undeploy("w3", job) || !in.unused(job) {
		t.Fatal("job still used after its last instance left and every query interest went")
	}
	// Removing what was never there is harmless.
	if j, unused := in.remove("w9", "nothing"); j != "" || unused {
		t.Fatalf("remove of an unknown key: %q %v", j, unused)
	}
	if !in.deploy("w1", "e.f.g.h") {
		t.Fatal("deploying a job no node needed is not fresh")
	}
	in.query("w1", job, job)
	in.forgetJob(job)
	if len(in.keys(job)) != 0 || len(in.byNode["w1"]) != 0 {
		t.Fatalf("forgetJob left %v / %v", in.keys(job), in.byNode["w1"])
	}
}
