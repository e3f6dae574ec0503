package broker

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/semnet/semnet/proto/mqttapi"
)

// Defaults of Config.
const (
	DefaultListen          = ":10003"
	DefaultMaxPacketSize   = 256 << 10
	DefaultMaxInflight     = 1024
	DefaultMaxQueued       = 1024
	DefaultMaxPendingBytes = 4 << 20
	DefaultWriteTimeout    = 10 * time.Second
	DefaultConnectTimeout  = 10 * time.Second
	DefaultKeepAliveMin    = 5 * time.Second
	DefaultKeepAliveMax    = 5 * time.Minute
	DefaultCredentialsPoll = 5 * time.Second
	DefaultPublishRate     = 1000
)

// Config configures a Broker. Zero values mean the defaults above.
type Config struct {
	// Listen is the TCP address, host:port (default ":10003").
	Listen string

	// CertFile and KeyFile (PEM) turn on TLS: the listener then speaks only TLS.
	// ClientCAFile (PEM) turns on mutual TLS: client certificates are verified against
	// these CAs, and a verified certificate whose Common Name or a DNS SAN equals the
	// client id authenticates the client. Needs CertFile and KeyFile. All three are
	// re-read when they change, for the connections that follow; errors name them by
	// `semnet cluster`'s flags (--mqtt-cert, --mqtt-key, --mqtt-client-ca).
	CertFile, KeyFile string
	ClientCAFile      string

	// CredentialsFile is the username/password file (format in the package doc); empty
	// turns password authentication off.
	CredentialsFile string
	// CredentialsPoll is how often the credentials file's modification time and size
	// are checked, to reload it when it changes; negative turns polling off (Reload
	// still works, e.g. on SIGHUP).
	CredentialsPoll time.Duration

	// AllowAnonymous admits clients that present neither a username nor a client
	// certificate, with their client id as identity. For trusted networks only.
	AllowAnonymous bool

	// MaxPacketSize bounds a packet from a client, in bytes, fixed header included; a
	// client sending a larger one is disconnected. It also bounds Publish.
	MaxPacketSize int
	// MaxInflight bounds QoS 1/2 messages to one client awaiting its acknowledgement
	// (a client reaching it is disconnected), and from one client awaiting the broker's
	// (MQTT 5 Receive Maximum). At most 65535.
	MaxInflight int
	// MaxQueuedMessages bounds the messages mochi queues for one client before they are
	// encoded; a client whose queue is full is disconnected.
	MaxQueuedMessages int
	// MaxPendingBytes bounds the bytes written for one client that its socket has not
	// taken yet; a client exceeding it is disconnected. At least 2 × MaxPacketSize.
	MaxPendingBytes int
	// WriteTimeout: a client whose socket takes no 32 KiB within it is disconnected.
	WriteTimeout time.Duration
	// ConnectTimeout bounds the time from accepting a connection to its CONNECT packet,
	// TLS handshake included.
	ConnectTimeout time.Duration
	// KeepAliveMin and KeepAliveMax bound the keepalive a client may ask for (whole
	// seconds, at most 65535 s); see the package doc.
	KeepAliveMin, KeepAliveMax time.Duration
	// PublishRate bounds the messages per second one connection may publish, on average
	// (default 1000; negative: no bound); PublishBurst is how many it may send at once
	// (default 2 × PublishRate). A publish beyond them is refused like one the ACL
	// refuses, and counted: see the package doc ("Floods").
	PublishRate  float64
	PublishBurst int
}

// withDefaults fills in defaults and checks the result.
func (c Config) withDefaults() (Config, error) {
	def := func(v *int, d int) {
		if *v == 0 {
			*v = d
		}
	}
	defDur := func(v *time.Duration, d time.Duration) {
		if *v == 0 {
			*v = d
		}
	}
	if c.Listen == "" {
		c.Listen = DefaultListen
	}
	def(&c.MaxPacketSize, DefaultMaxPacketSize)
	def(&c.MaxInflight, DefaultMaxInflight)
	def(&c.MaxQueuedMessages, DefaultMaxQueued)
	def(&c.MaxPendingBytes, max(DefaultMaxPendingBytes, 2*c.MaxPacketSize))
	defDur(&c.WriteTimeout, DefaultWriteTimeout)
	defDur(&c.ConnectTimeout, DefaultConnectTimeout)
	defDur(&c.KeepAliveMin, DefaultKeepAliveMin)
	defDur(&c.KeepAliveMax, DefaultKeepAliveMax)
	defDur(&c.CredentialsPoll, DefaultCredentialsPoll)
	if c.PublishRate == 0 {
		c.PublishRate = DefaultPublishRate
	}
	if c.PublishBurst == 0 && c.PublishRate > 0 {
		c.PublishBurst = int(max(1, 2*c.PublishRate))
	}
	switch {
	case c.MaxPacketSize < 64 || c.MaxPacketSize > 268435455:
		return c, fmt.Errorf("maximum packet size %d is out of range (64 bytes to 256 MiB)", c.MaxPacketSize)
	case c.MaxInflight < 1 || c.MaxInflight > 65535:
		return c, fmt.Errorf("max inflight %d is out of range (1 to 65535)", c.MaxInflight)
	case c.MaxQueuedMessages < 1 || c.MaxQueuedMessages > 1<<20:
		return c, fmt.Errorf("max queued messages %d is out of range (1 to 1048576)", c.MaxQueuedMessages)
	case c.MaxPendingBytes < 2*c.MaxPacketSize:
		return c, fmt.Errorf("max pending bytes %d must be at least twice the maximum packet size (%d)", c.MaxPendingBytes, c.MaxPacketSize)
	case c.WriteTimeout < 0 || c.ConnectTimeout < 0:
		return c, errors.New("write and connect timeouts must not be negative")
	case c.KeepAliveMin < time.Second || c.KeepAliveMax > 65535*time.Second || c.KeepAliveMin > c.KeepAliveMax:
		return c, fmt.Errorf("keepalive bounds %v to %v are invalid (1 s ≤ min ≤ max ≤ 65535 s)", c.KeepAliveMin, c.KeepAliveMax)
	case c.PublishRate > 0 && c.PublishBurst < 1:
		return c, fmt.Errorf("publish burst %d must be at least 1", c.PublishBurst)
	case c.CredentialsFile == "" && c.ClientCAFile == "" && !c.AllowAnonymous:
		return c, errors.New("no way for nodes to authenticate: set a credentials file, a client CA for mutual TLS, or allow anonymous access (trusted networks only)")
	}
	return c, nil
}

// Handler receives a message a node published. clientID is the sender's authenticated
// identity, which the ACL guarantees is the <id> of the "nodes/<id>/" topic.
type Handler func(clientID, topic string, payload []byte)

// Broker is the cluster's embedded MQTT broker.
type Broker struct {
	cfg  Config
	log  *slog.Logger
	tls  *tls.Config
	mqtt *mqtt.Server
	hook *hook
	m    *metrics

	ctx     context.Context // cancelled by Close: stops polling and TLS handshakes
	cancel  context.CancelFunc
	wg      sync.WaitGroup          // accept loop, poller, connections
	handler atomic.Pointer[Handler] // of the nodes' messages (Handle)

	creds    atomic.Pointer[credentials]
	reloadMu sync.Mutex // serialises Reload
	stamp    fileStamp  // of the credentials file last loaded (under reloadMu)

	mu      sync.Mutex
	ln      net.Listener
	started bool
	closing bool
	conns   map[*conn]struct{}
	current map[string]*conn // identity -> its newest established connection
	onGone  []func(clientID string)
}

// New builds a broker from cfg: it loads the credentials file and the TLS files and
// registers its metrics on reg (nil: not exported). log receives the broker's and
// mochi's logs. Start makes it listen.
func New(cfg Config, log *slog.Logger, reg prometheus.Registerer) (*Broker, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	tc, err := loadTLS(cfg, log)
	if err != nil {
		return nil, fmt.Errorf("broker: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	b := &Broker{cfg: cfg, log: log, tls: tc, ctx: ctx, cancel: cancel,
		conns: make(map[*conn]struct{}), current: make(map[string]*conn)}
	if cfg.CredentialsFile != "" {
		b.stamp, _ = stampOf(cfg.CredentialsFile)
		cs, err := loadCredentials(cfg.CredentialsFile)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("broker: %w", err)
		}
		b.creds.Store(cs)
	}
	if b.m, err = newMetrics(reg, func() float64 { return float64(b.ConnectedClients()) }); err != nil {
		cancel()
		return nil, fmt.Errorf("broker: %w", err)
	}

	caps := mqtt.NewDefaultServerCapabilities()
	caps.MaximumPacketSize = uint32(cfg.MaxPacketSize) // a backstop: conn.Read stops oversized packets first
	caps.MaximumInflight = uint16(cfg.MaxInflight)
	caps.ReceiveMaximum = uint16(cfg.MaxInflight)
	caps.MaximumClientWritesPending = int32(cfg.MaxQueuedMessages)
	// Sessions end with their connection: nodes use clean sessions, and a session kept
	// for a node that never returns would keep its subscriptions and queue forever.
	caps.MaximumSessionExpiryInterval = 0
	caps.RetainAvailable = 0   // the contract retains nothing; retained messages would pile up
	caps.TopicAliasMaximum = 0 // mochi checks the ACL before resolving an alias
	caps.SharedSubAvailable = 0
	b.mqtt = mqtt.New(&mqtt.Options{
		InlineClient: true,
		Capabilities: caps,
		Logger:       slog.New(mochiLog{log.Handler()}),
		// Nobody may subscribe to $SYS (ACL); don't pay for mochi's stop-the-world
		// memory statistics every second.
		SysTopicResendInterval: 3600,
	})
	b.hook = &hook{b: b}
	if err := b.mqtt.AddHook(b.hook, nil); err != nil {
		cancel()
		return nil, fmt.Errorf("broker: add hook: %w", err)
	}
	return b, nil
}

// Start listens on the configured address and serves in the background until Close.
func (b *Broker) Start() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.started || b.closing {
		return errors.New("broker: already started or closed")
	}
	ln, err := net.Listen("tcp", b.cfg.Listen)
	if err != nil {
		return fmt.Errorf("broker: listen on %s: %w", b.cfg.Listen, err)
	}
	if err := b.mqtt.Serve(); err != nil {
		ln.Close()
		return fmt.Errorf("broker: start: %w", err)
	}
	b.ln, b.started = ln, true
	b.wg.Add(1)
	go b.accept(ln)
	if b.cfg.CredentialsFile != "" && b.cfg.CredentialsPoll > 0 {
		b.wg.Add(1)
		go b.poll(b.cfg.CredentialsPoll)
	}
	b.log.Info("MQTT broker listening", "addr", ln.Addr().String(), "tls", b.tls != nil,
		"mutual_tls", b.cfg.ClientCAFile != "", "passwords", b.cfg.CredentialsFile != "",
		"anonymous", b.cfg.AllowAnonymous, "max_packet_size", b.cfg.MaxPacketSize)
	return nil
}

// Addr returns the address the broker listens on (nil before Start).
func (b *Broker) Addr() net.Addr {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ln == nil {
		return nil
	}
	return b.ln.Addr()
}

// Close stops listening and disconnects every client (MQTT 5 clients are told: Server
// Shutting Down). When it returns, no handler or disconnect callback runs any more.
// Later calls do nothing.
func (b *Broker) Close() error {
	b.mu.Lock()
	if b.closing {
		b.mu.Unlock()
		return nil
	}
	b.closing = true
	ln := b.ln
	conns := slices.Collect(maps.Keys(b.conns))
	b.mu.Unlock()

	b.cancel()
	if ln != nil {
		ln.Close()
	}
	for _, cl := range b.mqtt.Clients.GetAll() {
		// mochi would send DISCONNECT to MQTT 3 clients too, which 3.1.1 does not allow.
		if !cl.Net.Inline && !cl.Closed() && cl.Properties.ProtocolVersion == 5 {
			_ = b.mqtt.DisconnectClient(cl, packets.ErrServerShuttingDown)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	b.wg.Wait()
	return b.mqtt.Close()
}

// Publish publishes a message from the cluster to the nodes subscribed to topic, at QoS 0
// (not retained). It never waits for a client: messages for a client that does not keep
// up are dropped and the client disconnected. Only the cluster can publish under "jobs/".
//
// QoS 0 because QoS 1 would buy nothing here and costs a round trip per message: sessions
// end with their connection, so a message not acknowledged when the connection drops is
// discarded either way, and while the connection lasts TCP delivers every message in
// order. What covers a lost connection is the node's re-reading of its tables when it
// reconnects. Without the acknowledgements a push to 1,000 nodes takes a quarter less time
// (clusterload, propagation p50 and p99), and no delivery takes a packet identifier a node's
// SUBSCRIBE could collide with (see hook.collides).
func (b *Broker) Publish(topic string, payload []byte) error {
	if topic == "" || strings.ContainsAny(topic, "+#") || strings.HasPrefix(topic, "$") || !utf8.ValidString(topic) {
		return fmt.Errorf("broker: publish to %q: not a valid topic name", topic)
	}
	if n := publishSize(topic, payload); n > b.cfg.MaxPacketSize {
		return fmt.Errorf("broker: publish to %q: message of %d bytes exceeds the maximum packet size (%d)", topic, n, b.cfg.MaxPacketSize)
	}
	if b.isClosing() {
		return fmt.Errorf("broker: publish to %q: broker closed", topic)
	}
	if b.deliver(topic, payload) {
		return nil
	}
	if err := b.mqtt.Publish(topic, payload, false, 0); err != nil {
		return fmt.Errorf("broker: publish to %q: %w", topic, err)
	}
	return nil
}

// deliver sends a message of the cluster's to its subscribers itself, when all of them
// speak MQTT 3.1.1 (so no subscription identifier is to be added: each gets the same
// bytes); it reports whether it did. Otherwise Publish hands the message to mochi, which
// copies it for each subscriber, queues the copy for that client's writer goroutine,
// and encodes it there once per client, to hand it to the connection's own writer
// (conn). Here the message is encoded once and goes straight to each connection's
// writer: a push to 1,000 nodes is encoded once instead of 1,000 times and wakes half
// as many goroutines, and a query's answer, written in the goroutine that read the
// query, mostly joins the query's PUBACK in one socket write (BenchmarkRequestAnswer).
//
// A message on a node's own topic ("nodes/<id>/net/…", which only node id may subscribe
// to: the ACL) skips the subscription index too when the node holds a subscription to
// exactly that topic. Every delivery passes the same read check as mochi's (the ACL and
// the slow-client guard). A message sent this way may overtake one mochi still holds
// for the same client (only with a client that needs mochi's path for some topic); the
// cluster's entries carry their revision, and nodes keep the newer.
func (b *Broker) deliver(topic string, payload []byte) bool {
	var one [1]*mqtt.Client
	to := one[:0]
	if id, _, ok := mqttapi.ParseNodeTopic(topic); ok {
		cl, ok := b.mqtt.Clients.Get(id)
		if !ok {
			return false
		}
		if _, ok := cl.State.Subscriptions.Get(topic); !ok {
			return false // a wildcard subscription, or none: mochi knows
		}
		to = append(to, cl)
	} else {
		subs := b.mqtt.Topics.Subscribers(topic)
		if len(subs.Shared) > 0 || len(subs.InlineSubscriptions) > 0 {
			return false
		}
		for id := range subs.Subscriptions {
			if cl, ok := b.mqtt.Clients.Get(id); ok {
				to = append(to, cl)
			}
		}
	}
	for _, cl := range to {
		if cl.Net.Inline || cl.Properties.ProtocolVersion >= 5 || connOf(cl) == nil {
			return false
		}
	}
	if len(to) == 0 {
		return true
	}
	var buf bytes.Buffer
	pk := packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Publish}, TopicName: topic, Payload: payload, ProtocolVersion: 4}
	if err := pk.PublishEncode(&buf); err != nil {
		return false // mochi says why
	}
	sent := 0
	for _, cl := range to {
		if !b.hook.OnACLCheck(cl, topic, false) {
			continue // as mochi does: not delivered (and a client that does not keep up is cut)
		}
		if _, err := connOf(cl).Write(buf.Bytes()); err == nil {
			sent++
		}
	}
	b.m.sent.Add(float64(sent))
	return true
}

// publishSize is the size of a QoS 0 PUBLISH (MQTT 5: with an empty property list).
func publishSize(topic string, payload []byte) int {
	rem := 2 + len(topic) + 1 + len(payload)
	n := 1 + 1
	for x := rem; x >= 128; x >>= 7 {
		n++
	}
	return n + rem
}

// Handle makes h receive every message a node publishes on its own "nodes/<id>/net/"
// topics (what the reference cluster subscribes to as "nodes/+/net/#"), once the broker
// has taken it: authenticated, allowed by the ACL and the publish rate, and acknowledged
// (QoS 1); and a node's will there when its connection breaks. A later call replaces h.
// Messages on a node's other topics ("nodes/<id>/…" outside "net/") are not the
// cluster's and do not reach h.
//
// h runs in the goroutine that reads the sending node's connection, so each node's
// messages reach h one at a time, in order, and a slow h delays only that node (mochi
// reads its next packet, PINGREQ included, when h returns: h should return within
// seconds, handing long work to a goroutine of its own). h must not modify payload.
//
// h is called from the broker's hook, not through an inline subscription: mochi matches
// every publish against the inline subscriptions, so "nodes/+/net/#" would also catch
// each of the cluster's own answers ("nodes/<id>/net/tablequery/result") and hand it
// back to be ignored, copying subscription maps for both on the way: a query and its
// answer allocated half as much again (BenchmarkRequestAnswer: 39 allocations, 9.4 KB
// per round trip, against 29 and 6.3 KB this way).
func (b *Broker) Handle(h Handler) error {
	if h == nil {
		return errors.New("broker: nil handler")
	}
	if b.isClosing() {
		return errors.New("broker: handle node messages: broker closed")
	}
	b.handler.Store(&h)
	return nil
}

// received passes a message a node published, and the broker took, to the handler if
// it is on the node's "nodes/<id>/net/" topics. id is the sender's identity (its client
// id).
func (b *Broker) received(id string, pk packets.Packet) {
	h := b.handler.Load()
	if h == nil {
		return
	}
	if mqttapi.ToCluster(pk.TopicName, id) {
		(*h)(id, pk.TopicName, pk.Payload)
	}
}

// OnDisconnect registers fn to be called with a client's identity when it disconnects
// (for any reason, Close included), after the last handler call for its messages. fn is
// not called for a connection that a newer one with the same identity replaced (the
// client is still there). fn runs in the disconnected connection's goroutine.
func (b *Broker) OnDisconnect(fn func(clientID string)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.onGone = append(b.onGone, fn)
}

// Connected reports whether a client with identity id is connected.
func (b *Broker) Connected(id string) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	_, ok := b.current[id]
	return ok
}

// ConnectedClients returns the number of connected clients (distinct identities).
func (b *Broker) ConnectedClients() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.current)
}

func (b *Broker) isClosing() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.closing
}

// accept accepts connections until the listener closes.
func (b *Broker) accept(ln net.Listener) {
	defer b.wg.Done()
	var delay time.Duration
	for {
		raw, err := ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			// e.g. out of file descriptors: back off as net/http does.
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			b.log.Warn("accept failed; retrying", "err", err, "retry_in", delay)
			select {
			case <-time.After(delay):
			case <-b.ctx.Done():
				return
			}
			continue
		}
		delay = 0
		c := newConn(b, raw)
		b.mu.Lock()
		if b.closing {
			b.mu.Unlock()
			raw.Close()
			continue
		}
		b.conns[c] = struct{}{}
		b.wg.Add(1)
		b.mu.Unlock()
		go b.serve(c)
	}
}

// listenerID is the listener name mochi records for clients.
const listenerID = "semnet"

// serve runs one connection: TLS handshake, then mochi, then the bookkeeping.
func (b *Broker) serve(c *conn) {
	defer b.wg.Done()
	go c.writeLoop()
	// The handshake and CONNECT share one deadline; after CONNECT mochi keeps the read
	// deadline at 1.5 × keepalive.
	deadline := time.Now().Add(b.cfg.ConnectTimeout)
	_ = c.SetReadDeadline(deadline)
	err := b.handshake(c, deadline)
	if err == nil {
		err = b.mqtt.EstablishConnection(listenerID, c)
	}
	c.Close()
	b.ended(c, err)
	<-c.done // the socket is closed
	b.mu.Lock()
	delete(b.conns, c)
	b.mu.Unlock()
}

// handshake runs the TLS handshake, if TLS is on, and records the client certificate's
// names.
func (b *Broker) handshake(c *conn, deadline time.Time) error {
	tc, ok := c.Conn.(*tls.Conn)
	if !ok {
		return nil
	}
	ctx, cancel := context.WithDeadline(b.ctx, deadline)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		if errors.Is(err, io.EOF) { // closed before saying anything: a TCP health check, a port scan
			b.log.Debug("connection closed before the TLS handshake", "remote", c.remote)
		} else if b.ctx.Err() == nil {
			b.m.refused.WithLabelValues(refusedTLS.String()).Inc()
			b.log.Warn("connection refused", "remote", c.remote, "reason", refusedTLS.String(), "err", err)
		}
		return err
	}
	c.names = certNames(tc.ConnectionState())
	return nil
}

// established records an authenticated client as connected; from now on it is its
// identity's current connection (an older one is being taken over by mochi).
func (b *Broker) established(c *conn, cl *mqtt.Client) {
	s := c.sess.Load()
	b.mu.Lock()
	b.current[s.id] = c
	c.established.Store(true)
	b.mu.Unlock()
	b.log.Info("client connected", "client", s.id, "remote", c.remote, "auth", s.method, "mqtt", cl.Properties.ProtocolVersion)
}

// ended does the bookkeeping for a connection mochi is done with: the disconnect
// callbacks run unless a newer connection of the same identity replaced it.
func (b *Broker) ended(c *conn, err error) {
	s := c.sess.Load()
	if s == nil || !c.established.Load() {
		b.log.Debug("connection closed before the client connected", "remote", c.remote, "err", err)
		return
	}
	b.mu.Lock()
	last := b.current[s.id] == c
	if last {
		delete(b.current, s.id)
	}
	closing := b.closing
	fns := slices.Clone(b.onGone)
	b.mu.Unlock()
	b.log.Info("client disconnected", "client", s.id, "remote", c.remote, "reason", disconnectReason(c, err, closing, !last))
	if last {
		for _, fn := range fns {
			fn(s.id)
		}
	}
}

// disconnectReason says in words why a connection ended.
func disconnectReason(c *conn, err error, closing, replaced bool) string {
	switch r := c.dropReason(); {
	case r == dropPacketTooLarge:
		return "packet too large"
	case r != "":
		return "too slow (" + string(r) + ")"
	case replaced:
		return "replaced by a newer connection with the same client id"
	case closing:
		return "broker closing"
	case err == nil:
		return "client disconnected"
	case errors.Is(err, io.EOF):
		return "connection closed by the client"
	case errors.Is(err, os.ErrDeadlineExceeded):
		return "keepalive expired (no packet for 1.5 × keepalive)"
	}
	return err.Error()
}
