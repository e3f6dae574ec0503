// Package testservers tells tests where the real servers they talk to are: the ones
// .ci/with-servers starts on free loopback ports (`make test` runs every test under it).
// A test whose server is missing skips with a message naming it — except in CI, where
// it fails: there the server must be running, and a silent skip would hide that.
package testservers

import (
	"os"
	"testing"
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
