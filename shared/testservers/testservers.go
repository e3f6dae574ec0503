// Package testservers tells tests where the real servers they talk to are: the ones
// .ci/with-servers starts on free loopback ports (`make test` runs every test under it).
// A test whose server is missing skips with a message naming it — except in CI, where
// it fails: there the server must be running, and a silent skip would hide that.
package testservers

import (
	"bytes"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"
)

// MongoURI returns the URI of a MongoDB-wire server (FerretDB in CI).
func MongoURI(t testing.TB) string {
	t.Helper()
	return need(t, "SEMNET_TEST_MONGO_URI", "a MongoDB-wire server (FerretDB)")
}

// RedisURL returns the URL of a redis-server.
func RedisURL(t testing.TB) string {
	t.Helper()
	return need(t, "SEMNET_TEST_REDIS_URL", "a redis-server")
}

func need(t testing.TB, env, what string) string {
	t.Helper()
	v := os.Getenv(env)
	if v == "" {
		if os.Getenv("CI") != "" {
			t.Fatalf("%s is not set in CI: .ci/run must start %s (see .ci/with-servers)", env, what)
		}
		t.Skipf("%s not set: this test needs %s; run it through .ci/with-servers (make test does)", env, what)
	}
	return v
}

// Server is a private server process a test starts, stops and restarts, for fault tests
// that must not disturb the shared servers: same port and same data directory across
// restarts, killed when the test ends.
type Server struct {
	t    testing.TB
	bin  string
	args []string
	addr string
	cmd  *exec.Cmd
	log  *bytes.Buffer
}

// FerretDBSQLiteParams configure the test FerretDB's SQLite (.ci/with-servers passes the
// same): its write-ahead log is synced to disk at checkpoints, not at every commit
// (synchronous=NORMAL; FerretDB's default is FULL). A killed FerretDB, what the fault
// tests do, loses nothing either way (the log is in the OS's page cache); only a
// machine crash could lose the last commits, as MongoDB's default journal interval
// (100 ms, for writes without j:true) allows too. Syncing every commit made every write
// wait for the disk behind SQLite's one write lock: the root load tool's creates at
// 75/s had p99 73 ms (instances 116 ms) against 18-20 ms (23-24 ms) with NORMAL.
const FerretDBSQLiteParams = "_pragma=synchronous(normal)"

// StartFerretDB starts a private FerretDB (SQLite in a temporary directory) and returns
// it running; URI gives its address. The binary comes from SEMNET_TEST_FERRETDB_BIN,
// which .ci/with-servers sets. Its SQLite syncs to disk as .ci/with-servers' does
// (FerretDBSQLiteParams).
func StartFerretDB(t testing.TB) *Server {
	t.Helper()
	bin := need(t, "SEMNET_TEST_FERRETDB_BIN", "the FerretDB binary (.ci/build-ferretdb)")
	s := &Server{t: t, bin: bin, addr: FreeAddr(t)}
	dir := t.TempDir()
	s.args = []string{"--handler=sqlite", "--sqlite-url=file:" + dir + "/?" + FerretDBSQLiteParams, "--state-dir=" + dir, "--listen-addr=" + s.addr,
		"--debug-addr=" + FreeAddr(t), "--telemetry=disable", "--log-level=warn"}
	s.Start()
	return s
}

// StartRedis starts a private redis-server without persistence: a restart empties it.
func StartRedis(t testing.TB) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("redis-server is not installed in CI: .ci/run must install it")
		}
		t.Skip("redis-server not installed (apt-get install redis-server)")
	}
	s := &Server{t: t, bin: bin, addr: FreeAddr(t)}
	host, port, _ := net.SplitHostPort(s.addr)
	s.args = []string{"--port", port, "--bind", host, "--dir", t.TempDir(), "--save", "", "--appendonly", "no"}
	s.Start()
	return s
}

// Addr is the server's host:port.
func (s *Server) Addr() string { return s.addr }

// URI is the server's address as a MongoDB URI.
func (s *Server) URI() string { return "mongodb://" + s.addr + "/" }

// URL is the server's address as a Redis URL (database 0).
func (s *Server) URL() string { return "redis://" + s.addr + "/0" }

// Start starts the server (again) and waits until it accepts connections.
func (s *Server) Start() {
	s.t.Helper()
	s.log = &bytes.Buffer{}
	s.cmd = exec.Command(s.bin, s.args...)
	s.cmd.Stdout, s.cmd.Stderr = s.log, s.log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("start %s: %v", s.bin, err)
	}
	s.t.Cleanup(s.Kill)
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if c, err := net.Dial("tcp", s.addr); err == nil {
			c.Close()
			return
		}
	}
	s.Kill()
	s.t.Fatalf("%s did not listen on %s; its log:\n%s", s.bin, s.addr, s.log)
}

// Kill stops the server with SIGKILL (no chance to flush anything) and waits for it.
func (s *Server) Kill() {
	if s.cmd != nil && s.cmd.Process != nil && s.cmd.ProcessState == nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// FreeAddr returns a loopback address with a port nothing listens on now.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
