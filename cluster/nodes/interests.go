package nodes

import "sync"

// interests records which node needs which table entries, by the key the node used (a
// job name or an IP: the node subscribes to updates under that key) and by job. A job
// stays interesting to the cluster while any node queried it or runs one of its
// instances.
type interests struct {
	mu       sync.Mutex
	byKey    map[string]set            // key -> nodes that queried it
	byNode   map[string]set            // node -> keys it queried
	keysOf   map[string]set            // job -> keys nodes used for it
	jobOf    map[string]string         // key -> job
	deployed map[string]map[string]int // job -> node -> instances it runs
}

type set map[string]struct{}

func (s set) add(k string) { s[k] = struct{}{} }

func newInterests() *interests {
	return &interests{byKey: map[string]set{}, byNode: map[string]set{}, keysOf: map[string]set{}, jobOf: map[string]string{}, deployed: map[string]map[string]int{}}
}

func addTo(m map[string]set, k, v string) {
	s := m[k]
	if s == nil {
		s = set{}
		m[k] = s
	}
	s.add(v)
}

func removeFrom(m map[string]set, k, v string) {
	if s := m[k]; s != nil {
		delete(s, v)
		if len(s) == 0 {
			delete(m, k)
		}
	}
}

// query records that node asked for job by key. It reports whether no node needed the
// job before.
func (in *interests) query(node, key, job string) (fresh bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	fresh = in.unusedLocked(job)
	addTo(in.byKey, key, node)
	addTo(in.byNode, node, key)
	addTo(in.keysOf, job, key)
	in.jobOf[key] = job
	return fresh
}

// remove drops node's interest in key. It returns the job the key stood for and whether
// no node needs that job any more.
func (in *interests) remove(node, key string) (job string, unused bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	removeFrom(in.byKey, key, node)
	removeFrom(in.byNode, node, key)
	return in.settle(key)
}

// settle forgets key once no node uses it, and reports whether its job is unused.
// Callers hold mu.
func (in *interests) settle(key string) (job string, unused bool) {
	job, ok := in.jobOf[key]
	if !ok {
		return "", false
	}
	if len(in.byKey[key]) > 0 {
		return job, false
	}
	delete(in.jobOf, key)
	removeFrom(in.keysOf, job, key)
	return job, in.unusedLocked(job)
}

// dropNode forgets every query interest of a node that went away (its subscriptions went
// with its session). It returns the jobs no node needs any more.
func (in *interests) dropNode(node string) (unused []string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for key := range in.byNode[node] {
		removeFrom(in.byKey, key, node)
		if job, gone := in.settle(key); gone {
			unused = append(unused, job)
		}
	}
	delete(in.byNode, node)
	return unused
}

// deploy and undeploy count the instances of job a node runs: a node always needs the
// entries of its own jobs. deploy reports whether no node needed the job before.
func (in *interests) deploy(node, job string) (fresh bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	fresh = in.unusedLocked(job)
	m := in.deployed[job]
	if m == nil {
		m = map[string]int{}
		in.deployed[job] = m
	}
	m[node]++
	return fresh
}

func (in *interests) undeploy(node, job string) (unused bool) {
	in.mu.Lock()
	defer in.mu.Unlock()
	if m := in.deployed[job]; m != nil {
		if m[node]--; m[node] <= 0 {
			delete(m, node)
		}
		if len(m) == 0 {
			delete(in.deployed, job)
		}
	}
	return in.unusedLocked(job)
}

// keys returns the keys nodes use for job (each is an updates topic to publish on).
func (in *interests) keys(job string) []string {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make([]string, 0, len(in.keysOf[job]))
	for k := range in.keysOf[job] {
		out = append(out, k)
	}
	return out
}

// forgetJob drops every record of a deleted job.
func (in *interests) forgetJob(job string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	for key := range in.keysOf[job] {
		for node := range in.byKey[key] {
			removeFrom(in.byNode, node, key)
		}
		delete(in.byKey, key)
		delete(in.jobOf, key)
	}
	delete(in.keysOf, job)
}

// unused reports whether no node queries or runs job.
func (in *interests) unused(job string) bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.unusedLocked(job)
}

func (in *interests) unusedLocked(job string) bool {
	return len(in.keysOf[job]) == 0 && len(in.deployed[job]) == 0
}
