package broker

import (
	"bytes"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/mochi-mqtt/server/v2/packets"
	"go.yaml.in/yaml/v3"
	"golang.org/x/crypto/bcrypt"
)

// credentials are the parsed credentials file: worker id -> password. Immutable once
// built; a reload builds a new one and swaps the pointer.
type credentials struct {
	users map[string]credential
}

type credential struct {
	secret string // the password, or its bcrypt hash
	hashed bool
	allow  bool
}

// fileFormat is the credentials file: mochi's auth ledger format (hooks/auth), restricted
// to what applies here: exact usernames (no "*" patterns), no client/remote matching
// and no "acl" section (the ACL is fixed, see maySubscribe). Unknown keys are errors, so
// a rule that would not be enforced is never silently ignored.
type fileFormat struct {
	Auth []struct {
		Username *string `yaml:"username"`
		Password *string `yaml:"password"`
		Allow    *bool   `yaml:"allow"`
	} `yaml:"auth"`
}

// loadCredentials reads and parses the credentials file at path.
func loadCredentials(path string) (*credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read credentials file: %w", err)
	}
	cs, err := parseCredentials(data)
	if err != nil {
		return nil, fmt.Errorf("credentials file %s: %w", path, err)
	}
	return cs, nil
}

// parseCredentials parses a credentials file (YAML, or JSON, which is YAML too).
func parseCredentials(data []byte) (*credentials, error) {
	var f fileFormat
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&f); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	cs := &credentials{users: make(map[string]credential, len(f.Auth))}
	seen := make(map[string]int, len(f.Auth))
	for i, e := range f.Auth {
		n := i + 1
		if e.Username == nil || *e.Username == "" {
			return nil, fmt.Errorf("auth entry %d: username is missing (it is the worker id)", n)
		}
		user := *e.Username
		if strings.Contains(user, "*") {
			return nil, fmt.Errorf("auth entry %d (%s): username patterns are not supported; list each worker id", n, user)
		}
		if err := checkIdentity(user); err != nil {
			return nil, fmt.Errorf("auth entry %d (%s): username is not a usable worker id: %w", n, user, err)
		}
		if prev, dup := seen[user]; dup {
			return nil, fmt.Errorf("auth entry %d (%s): username already in entry %d", n, user, prev)
		}
		seen[user] = n
		if e.Password == nil || *e.Password == "" {
			return nil, fmt.Errorf("auth entry %d (%s): password is missing", n, user)
		}
		if e.Allow == nil {
			return nil, fmt.Errorf("auth entry %d (%s): allow is missing; set allow: true to let the node connect, or allow: false to block it", n, user)
		}
		c := credential{secret: *e.Password, allow: *e.Allow, hashed: isBcrypt(*e.Password)}
		if c.hashed {
			if _, err := bcrypt.Cost([]byte(c.secret)); err != nil {
				return nil, fmt.Errorf("auth entry %d (%s): password looks like a bcrypt hash but is not one: %w", n, user, err)
			}
		}
		cs.users[user] = c
	}
	return cs, nil
}

// isBcrypt reports whether a password from the file is a bcrypt hash ("$2a$", "$2b$" or
// "$2y$" prefix), as written by `htpasswd -nbB` or `mosquitto_passwd`-style tools.
func isBcrypt(s string) bool {
	return len(s) == 60 && (strings.HasPrefix(s, "$2a$") || strings.HasPrefix(s, "$2b$") || strings.HasPrefix(s, "$2y$"))
}

// check reports whether user may connect with password. Plain passwords are compared as
// SHA-256 digests in constant time, so neither their content nor their length leaks
// through timing; an unknown user costs the same comparison.
func (cs *credentials) check(user, password string) bool {
	c, known := cs.users[user]
	var match bool
	if c.hashed {
		match = bcrypt.CompareHashAndPassword([]byte(c.secret), []byte(password)) == nil
	} else {
		got, want := sha256.Sum256([]byte(password)), sha256.Sum256([]byte(c.secret))
		match = subtle.ConstantTimeCompare(got[:], want[:]) == 1
	}
	return known && c.allow && match
}

// still reports whether a client that authenticated as user with the entry it had then
// may stay connected under these credentials: the entry must still exist, be allowed
// and have the same password.
func (cs *credentials) still(user string, then credential) bool {
	c, ok := cs.users[user]
	return ok && c.allow && c.secret == then.secret
}

// fileStamp identifies a version of the credentials file cheaply, for polling.
type fileStamp struct {
	mod  time.Time
	size int64
}

func (s fileStamp) same(o fileStamp) bool { return s.mod.Equal(o.mod) && s.size == o.size }

func stampOf(path string) (fileStamp, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{}, err
	}
	return fileStamp{mod: fi.ModTime(), size: fi.Size()}, nil
}

// Reload re-reads the credentials file (the cluster calls it on SIGHUP; the broker also
// polls the file, see Config.CredentialsPoll). New connections use the new credentials at
// once; clients connected by password whose entry is gone, has allow: false or a new
// password are disconnected. If the file cannot be read or parsed, the previous
// credentials stay in force and the error is logged and returned. Without a credentials
// file Reload does nothing.
func (b *Broker) Reload() error {
	path := b.cfg.CredentialsFile
	if path == "" {
		return nil
	}
	b.reloadMu.Lock()
	defer b.reloadMu.Unlock()
	b.stamp, _ = stampOf(path) // even if this version is broken: poll again when it changes
	cs, err := loadCredentials(path)
	if err != nil {
		b.log.Error("credentials file not reloaded; the previous credentials stay in force", "err", err)
		return fmt.Errorf("broker: %w", err)
	}
	b.creds.Store(cs)
	b.log.Info("credentials reloaded", "file", path, "users", len(cs.users))
	b.revoke(cs)
	return nil
}

// revoke disconnects the password clients cs no longer admits.
func (b *Broker) revoke(cs *credentials) {
	b.mu.Lock()
	var gone []*conn
	for _, c := range b.current {
		if s := c.sess.Load(); s.method == methodPassword && !cs.still(s.id, s.cred) {
			gone = append(gone, c)
		}
	}
	b.mu.Unlock()
	for _, c := range gone {
		cl := c.client.Load()
		b.log.Warn("credentials revoked; disconnecting client", "client", cl.ID, "remote", c.remote)
		if cl.Properties.ProtocolVersion == 5 {
			_ = b.mqtt.DisconnectClient(cl, packets.ErrNotAuthorized)
		} else {
			cl.Stop(packets.ErrNotAuthorized)
		}
	}
}

// poll reloads the credentials file when its modification time or size changes.
func (b *Broker) poll(every time.Duration) {
	defer b.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	var statErr string // last stat error logged, so a missing file is reported once
	for {
		select {
		case <-b.ctx.Done():
			return
		case <-t.C:
		}
		st, err := stampOf(b.cfg.CredentialsFile)
		if err != nil {
			if err.Error() != statErr {
				statErr = err.Error()
				b.log.Warn("cannot check the credentials file; the current credentials stay in force", "err", err)
			}
			continue
		}
		statErr = ""
		b.reloadMu.Lock()
		changed := !st.same(b.stamp)
		b.reloadMu.Unlock()
		if changed {
			_ = b.Reload() // logs its errors
		}
	}
}
