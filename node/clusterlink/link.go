// Package clusterlink is the worker node's side of the cluster MQTT contract
// (CONTRACT.md, "Cluster MQTT"): table queries with their results matched back to the
// caller, subnet requests, instance status reports, interest bookkeeping and update
// pushes.
//
// It speaks exactly what a reference worker node speaks (MQTT 3.1.1, clean session,
// QoS 1, client id = worker id), so it works against the reference cluster too; against a
// semnet cluster it also reads the fresh entry carried in a push and needs no second
// round trip.
package clusterlink

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	paho "github.com/eclipse/paho.mqtt.golang"
	"golang.org/x/sync/singleflight"

	"github.com/semnet/semnet/proto/mqttapi"
)

// DefaultKeepAlive is the reference node's MQTT keepalive.
const DefaultKeepAlive = 30 * time.Second

// ErrUnknown is wrapped by Query when the cluster answers that no job has the key
// (error_code "unknown"). Its other error answers (root unreachable, cluster busy, or
// an error without a code) do not wrap it: they say nothing about the job.
var ErrUnknown = errors.New("clusterlink: unknown service")

// Config configures a Link.
type Config struct {
	// Broker is the cluster's MQTT address, host:port.
	Broker string
	// NodeID is the worker id: the MQTT client id and username.
	NodeID string
	// Password authenticates NodeID; empty with TLS client certificates or an anonymous
	// (trusted-network) broker.
	Password string
	// TLS, when set, connects with TLS (add client certificates for mutual TLS).
	TLS *tls.Config
	// QueryTimeout bounds a table query or subnet request (default 5 s, as the reference).
	QueryTimeout time.Duration
	// KeepAlive is the MQTT keepalive, whole seconds (default DefaultKeepAlive, as the
	// reference). It is the node's heartbeat: the broker drops a node silent for 1.5
	// times it (the broker raises one below its minimum, 5 s by default, to that).
	KeepAlive time.Duration
	// OnUpdate is called for every message on a followed jobs/<key>/updates_available
	// topic, from the client's goroutine: it must not block on the Link.
	OnUpdate func(key string, u mqttapi.UpdatesAvailable)
	// OnConnect is called after every (re)connection once the subscriptions are back, on
	// a goroutine of its own: the node re-announces its instances there.
	OnConnect func()
	// OnGatewayConfig, when set, makes the link subscribe to the node's gateway/config
	// topic (a gateway node) and is called with every configuration the cluster sends,
	// on the client's goroutine: it must not block on the Link. A malformed message
	// arrives as a GatewayConfig with Error set.
	OnGatewayConfig func(mqttapi.GatewayConfig)
	Logger          *slog.Logger
}

// Link is a connected node. It is safe for concurrent use.
type Link struct {
	cfg    Config
	client paho.Client
	log    *slog.Logger

	queries singleflight.Group
	mu      sync.Mutex
	waiting map[string]chan *mqttapi.TableQueryResult // by query key
	subnet  chan mqttapi.SubnetResult                 // the one subnet request in flight
	subMu   sync.Mutex                                // one subnet request at a time
	follow  map[string]*following                     // keys whose updates the node follows
	ready   chan struct{}                             // closed once the first subscriptions hold
	once    sync.Once
	// failed is why the latest connection attempt failed. paho retries without
	// telling why, so a node with a wrong CA or certificate would wait silently: it is
	// logged when it changes, and Dial reports it when its context ends.
	failed error
}

// Dial connects to the broker and subscribes to the node's result topics. It returns
// once connected; afterwards the client reconnects by itself and restores every
// subscription.
func Dial(ctx context.Context, cfg Config) (*Link, error) {
	if cfg.NodeID == "" || cfg.Broker == "" {
		return nil, errors.New("clusterlink: a node id and a broker address are required")
	}
	if cfg.QueryTimeout <= 0 {
		cfg.QueryTimeout = 5 * time.Second
	}
	if cfg.KeepAlive == 0 {
		cfg.KeepAlive = DefaultKeepAlive
	}
	if cfg.KeepAlive < time.Second || cfg.KeepAlive%time.Second != 0 || cfg.KeepAlive > 65535*time.Second {
		return nil, fmt.Errorf("clusterlink: keepalive %v must be whole seconds from 1 s to 65535 s (MQTT)", cfg.KeepAlive)
	}
	l := newLink(cfg)
	scheme := "tcp://"
	if cfg.TLS != nil {
		scheme = "ssl://"
	}
	opts := paho.NewClientOptions().
		AddBroker(scheme + cfg.Broker).
		SetClientID(cfg.NodeID).
		SetCleanSession(true).
		SetProtocolVersion(4).
		SetKeepAlive(cfg.KeepAlive).
		SetAutoReconnect(true).
		SetMaxReconnectInterval(5 * time.Second).
		SetConnectRetry(true).
		SetConnectRetryInterval(time.Second).
		// Handlers only hand results over; unordered delivery keeps a slow OnUpdate from
		// delaying query results.
		SetOrderMatters(false).
		SetOnConnectHandler(func(paho.Client) { go l.connected() }).
		SetConnectionLostHandler(func(_ paho.Client, err error) {
			l.log.Warn("cluster connection lost; reconnecting", "broker", cfg.Broker, "err", err)
		}).
		SetConnectionNotificationHandler(func(_ paho.Client, n paho.ConnectionNotification) {
			if f, ok := n.(paho.ConnectionNotificationFailed); ok {
				l.attemptFailed(f.Reason)
			}
		})
	if cfg.Password != "" {
		opts.SetUsername(cfg.NodeID).SetPassword(cfg.Password)
	}
	if cfg.TLS != nil {
		opts.SetTLSConfig(cfg.TLS)
	}
	l.client = paho.NewClient(opts)
	tok := l.client.Connect()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return nil, fmt.Errorf("clusterlink: connect to %s as %s: %w", cfg.Broker, cfg.NodeID, err)
		}
	case <-ctx.Done():
		l.client.Disconnect(0)
		err := ctx.Err()
		l.mu.Lock()
		if l.failed != nil {
			err = fmt.Errorf("%w; the last attempt failed: %w", err, l.failed)
		}
		l.mu.Unlock()
		return nil, fmt.Errorf("clusterlink: connect to %s as %s: %w", cfg.Broker, cfg.NodeID, err)
	}
	// A result published before its topic is subscribed would be lost: wait for the
	// subscriptions.
	select {
	case <-l.ready:
	case <-ctx.Done():
		l.client.Disconnect(0)
		return nil, fmt.Errorf("clusterlink: subscribe to the result topics as %s: %w", cfg.NodeID, ctx.Err())
	}
	return l, nil
}

// newLink returns a link that is not connected yet: Dial connects it.
func newLink(cfg Config) *Link {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	return &Link{cfg: cfg, log: cfg.Logger, waiting: map[string]chan *mqttapi.TableQueryResult{}, follow: map[string]*following{},
		ready: make(chan struct{})}
}

// attemptFailed records why a connection attempt failed, logging a reason only when it
// differs from the previous attempt's: paho retries every second.
func (l *Link) attemptFailed(err error) {
	l.mu.Lock()
	repeated := l.failed != nil && l.failed.Error() == err.Error()
	l.failed = err
	l.mu.Unlock()
	if !repeated {
		l.log.Warn("cannot connect to the cluster; retrying", "broker", l.cfg.Broker, "node", l.cfg.NodeID, "err", err)
	}
}

// connected restores the subscriptions a clean session lost, then tells the node.
func (l *Link) connected() {
	l.mu.Lock()
	l.failed = nil // the next failure is news again
	l.mu.Unlock()
	subs := map[string]byte{
		mqttapi.NodeTopic(l.cfg.NodeID, mqttapi.SuffixTableQueryResult): 1,
		mqttapi.NodeTopic(l.cfg.NodeID, mqttapi.SuffixSubnetResult):     1,
	}
	if l.cfg.OnGatewayConfig != nil {
		subs[mqttapi.NodeTopic(l.cfg.NodeID, mqttapi.SuffixGatewayConfig)] = 1
	}
	fixed := len(subs)
	l.mu.Lock()
	for key := range l.follow {
		subs[mqttapi.UpdatesTopic(key)] = 1
	}
	l.mu.Unlock()
	if err := l.subscribe(context.Background(), subs); err != nil {
		l.log.Error("cluster subscriptions failed; queries will time out until the next reconnect", "err", err)
		return
	}
	l.log.Info("connected to cluster", "broker", l.cfg.Broker, "node", l.cfg.NodeID, "followed", len(subs)-fixed)
	l.once.Do(func() { close(l.ready) })
	if l.cfg.OnConnect != nil {
		l.cfg.OnConnect()
	}
}

// route hands a message to whoever waits for it.
func (l *Link) route(_ paho.Client, m paho.Message) {
	topic := m.Topic()
	if key, ok := mqttapi.ParseUpdatesTopic(topic); ok {
		var u mqttapi.UpdatesAvailable
		if err := json.Unmarshal(m.Payload(), &u); err != nil {
			// The reference sends any payload, even {}; a push means "query again".
			u = mqttapi.UpdatesAvailable{}
		}
		if l.cfg.OnUpdate != nil {
			l.cfg.OnUpdate(key, u)
		}
		return
	}
	// Only this node's topics are subscribed; anything else (a broker that routes
	// wrongly) is no answer to this node's requests.
	id, suffix, ok := mqttapi.ParseNodeTopic(topic)
	if !ok || id != l.cfg.NodeID {
		return
	}
	switch suffix {
	case mqttapi.SuffixTableQueryResult:
		r := new(mqttapi.TableQueryResult)
		if err := json.Unmarshal(m.Payload(), r); err != nil {
			l.log.Warn("malformed table query result ignored", "err", err)
			return
		}
		l.deliver(r)
	case mqttapi.SuffixSubnetResult:
		var r mqttapi.SubnetResult
		if err := json.Unmarshal(m.Payload(), &r); err != nil {
			r = mqttapi.SubnetResult{Error: "malformed subnet result: " + err.Error()}
		}
		l.mu.Lock()
		ch := l.subnet
		l.mu.Unlock()
		if ch != nil {
			select {
			case ch <- r:
			default:
			}
		}
	case mqttapi.SuffixGatewayConfig:
		if l.cfg.OnGatewayConfig == nil {
			return
		}
		var c mqttapi.GatewayConfig
		if err := json.Unmarshal(m.Payload(), &c); err != nil {
			c = mqttapi.GatewayConfig{Error: "malformed gateway configuration: " + err.Error()}
		}
		l.cfg.OnGatewayConfig(c)
	}
}

// deliver matches a result to its query as the reference does: by query key, job name,
// or any service or instance IP in it.
func (l *Link) deliver(r *mqttapi.TableQueryResult) {
	l.mu.Lock()
	defer l.mu.Unlock()
	var keys []string
	if r.QueryKey != "" {
		keys = append(keys, r.QueryKey)
	}
	if r.AppName != "" {
		keys = append(keys, r.AppName)
	}
	for _, in := range r.InstanceList {
		for _, ip := range in.ServiceIP {
			keys = append(keys, addrKeys(ip.Address, ip.AddressV6)...)
		}
	}
	for _, k := range keys {
		if ch, ok := l.waiting[k]; ok {
			delete(l.waiting, k)
			ch <- r // buffered, one result per waiter
			return
		}
	}
}

func addrKeys(addrs ...netip.Addr) []string {
	var out []string
	for _, a := range addrs {
		if a.IsValid() {
			out = append(out, a.String())
		}
	}
	return out
}

// Query asks the cluster for the entry of key: a job name or a Service or Instance IP.
// Concurrent queries for one key share one request. An error reply from the cluster
// wraps ErrUnknown when it says the key names nothing.
func (l *Link) Query(ctx context.Context, key string) (*mqttapi.TableQueryResult, error) {
	v, err, _ := l.queries.Do(key, func() (any, error) { return l.query(ctx, key) })
	if err != nil {
		return nil, err
	}
	return v.(*mqttapi.TableQueryResult), nil
}

func (l *Link) query(ctx context.Context, key string) (*mqttapi.TableQueryResult, error) {
	q := mqttapi.TableQuery{SName: key}
	if _, err := netip.ParseAddr(key); err == nil {
		q = mqttapi.TableQuery{SIP: key}
	}
	ch, done := l.await(key)
	defer done()
	if err := l.publish(ctx, mqttapi.SuffixTableQuery, q); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.QueryTimeout)
	defer cancel()
	select {
	case r := <-ch:
		switch {
		case r.Error != "" && r.ErrorCode == mqttapi.QueryErrUnknown:
			return nil, fmt.Errorf("clusterlink: table query %q: %w: %s", key, ErrUnknown, r.Error)
		case r.Error != "":
			return nil, fmt.Errorf("clusterlink: table query %q: the cluster answered %q: %s", key, r.ErrorCode, r.Error)
		}
		return r, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("clusterlink: table query %q: no answer: %w", key, ctx.Err())
	}
}

// await registers for the result of a query by key (deliver hands it over); done drops
// the registration unless a result took it. It is in place before the query is
// published, so no answer can arrive unseen.
func (l *Link) await(key string) (<-chan *mqttapi.TableQueryResult, func()) {
	ch := make(chan *mqttapi.TableQueryResult, 1)
	l.mu.Lock()
	l.waiting[key] = ch
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		if l.waiting[key] == ch {
			delete(l.waiting, key)
		}
		l.mu.Unlock()
	}
}

// Subnet asks the cluster for the node's worker subnet pair.
func (l *Link) Subnet(ctx context.Context) (mqttapi.SubnetResult, error) {
	l.subMu.Lock()
	defer l.subMu.Unlock()
	ch, done := l.awaitSubnet()
	defer done()
	if err := l.publish(ctx, mqttapi.SuffixSubnet, mqttapi.SubnetRequest{Method: mqttapi.SubnetMethodGet}); err != nil {
		return mqttapi.SubnetResult{}, err
	}
	ctx, cancel := context.WithTimeout(ctx, l.cfg.QueryTimeout)
	defer cancel()
	select {
	case r := <-ch:
		if r.Error != "" {
			return r, fmt.Errorf("clusterlink: subnet request: %s", r.Error)
		}
		if !r.Address.Is4() || !r.AddressV6.Is6() {
			return r, fmt.Errorf("clusterlink: subnet request: the answer lacks an address pair: %+v", r)
		}
		return r, nil
	case <-ctx.Done():
		return mqttapi.SubnetResult{}, fmt.Errorf("clusterlink: subnet request: no answer: %w", ctx.Err())
	}
}

// awaitSubnet registers for the answer to the subnet request about to be published (the
// caller holds subMu: one at a time); done drops the registration.
func (l *Link) awaitSubnet() (<-chan mqttapi.SubnetResult, func()) {
	ch := make(chan mqttapi.SubnetResult, 1)
	l.mu.Lock()
	l.subnet = ch
	l.mu.Unlock()
	return ch, func() {
		l.mu.Lock()
		l.subnet = nil
		l.mu.Unlock()
	}
}

// Follow subscribes to the pushes for key (a job name or an IP) and keeps the
// subscription across reconnections.
//
// A second Follow of a key whose subscription is still on its way waits for it: a
// caller that queries once Follow returns must not miss a push sent in between (the
// load run had two queries of one node race so, and one of them lost an update).
func (l *Link) Follow(ctx context.Context, key string) error {
	l.mu.Lock()
	f, ok := l.follow[key]
	if !ok {
		f = &following{done: make(chan struct{})}
		l.follow[key] = f
	}
	l.mu.Unlock()
	if !ok {
		f.err = l.subscribe(ctx, map[string]byte{mqttapi.UpdatesTopic(key): 1})
		if f.err != nil {
			f.err = fmt.Errorf("clusterlink: follow %s: %w", key, f.err)
			l.mu.Lock()
			if l.follow[key] == f { // a later Follow tries again
				delete(l.follow, key)
			}
			l.mu.Unlock()
		}
		close(f.done)
	}
	select {
	case <-f.done:
		return f.err
	case <-ctx.Done():
		return fmt.Errorf("clusterlink: follow %s: %w", key, ctx.Err())
	}
}

// following is a followed key's subscription: err is set once done is closed.
type following struct {
	done chan struct{}
	err  error
}

// subscribe subscribes to filters (topic -> QoS) and waits, for up to QueryTimeout,
// until the broker granted every one, subscribing again to those it refused. mochi
// keeps the packet identifiers of its deliveries to a client and of the client's own
// packets in one table (they are independent in MQTT), so a SUBSCRIBE that happens to
// carry the identifier of a delivery the node has not acknowledged yet is refused
// (return code 0x80), though nothing is wrong with it; the next attempt carries another
// identifier. Taking such a refusal for a subscription left a node without the pushes of
// a job it served traffic for (TestMultiCluster, in CI).
func (l *Link) subscribe(ctx context.Context, filters map[string]byte) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.QueryTimeout)
	defer cancel()
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval, bo.MaxInterval, bo.MaxElapsedTime = 10*time.Millisecond, 500*time.Millisecond, 0
	pending := maps.Clone(filters)
	var refused error
	err := backoff.Retry(func() error {
		tok := l.client.SubscribeMultiple(pending, l.route)
		select {
		case <-tok.Done():
		case <-ctx.Done():
			return backoff.Permanent(fmt.Errorf("subscribe to %v: %w", slices.Sorted(maps.Keys(pending)), ctx.Err()))
		}
		if err := tok.Error(); err != nil {
			return backoff.Permanent(fmt.Errorf("subscribe to %v: %w", slices.Sorted(maps.Keys(pending)), err))
		}
		for topic, code := range tok.(*paho.SubscribeToken).Result() {
			if code <= 2 { // the QoS granted; 0x80 is a refusal
				delete(pending, topic)
			}
		}
		if len(pending) > 0 {
			refused = fmt.Errorf("the broker refused the subscription to %v", slices.Sorted(maps.Keys(pending)))
			return refused
		}
		return nil
	}, backoff.WithContext(bo, ctx))
	if err != nil && refused != nil && !errors.Is(err, refused) {
		err = fmt.Errorf("%w: %w", refused, err) // the time ran out: say what it ran out on
	}
	return err
}

// Unfollow drops the subscription for key and tells the cluster the node no longer
// needs it (interest/remove), so the cluster can drop its own interest at root.
func (l *Link) Unfollow(ctx context.Context, key string) error {
	l.mu.Lock()
	_, was := l.follow[key]
	delete(l.follow, key)
	l.mu.Unlock()
	if was {
		if err := l.wait(ctx, l.client.Unsubscribe(mqttapi.UpdatesTopic(key)), "unfollow "+key); err != nil {
			return err
		}
	}
	return l.publish(ctx, mqttapi.SuffixInterestRemove, mqttapi.InterestRemove{AppName: key})
}

// Deployed reports that an instance runs on this node.
func (l *Link) Deployed(ctx context.Context, d mqttapi.Deployed) error {
	return l.publish(ctx, mqttapi.SuffixDeployed, d)
}

// RegisterGateway announces this node as a gateway; the cluster answers on
// gateway/config (Config.OnGatewayConfig).
func (l *Link) RegisterGateway(ctx context.Context, r mqttapi.GatewayRegister) error {
	return l.publish(ctx, mqttapi.SuffixGatewayRegister, r)
}

// Undeployed reports that an instance left this node.
func (l *Link) Undeployed(ctx context.Context, u mqttapi.Undeployed) error {
	return l.publish(ctx, mqttapi.SuffixUndeployed, u)
}

func (l *Link) publish(ctx context.Context, suffix string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("clusterlink: encode %s: %w", suffix, err)
	}
	return l.wait(ctx, l.client.Publish(mqttapi.NodeTopic(l.cfg.NodeID, suffix), 1, false, b), "publish "+suffix)
}

func (l *Link) wait(ctx context.Context, tok paho.Token, what string) error {
	ctx, cancel := context.WithTimeout(ctx, l.cfg.QueryTimeout)
	defer cancel()
	select {
	case <-tok.Done():
		if err := tok.Error(); err != nil {
			return fmt.Errorf("clusterlink: %s: %w", what, err)
		}
		return nil
	case <-ctx.Done():
		return fmt.Errorf("clusterlink: %s: %w", what, ctx.Err())
	}
}

// Connected reports whether the link is up now.
func (l *Link) Connected() bool { return l.client.IsConnectionOpen() }

// Close disconnects, letting in-flight publishes finish for up to 250 ms.
func (l *Link) Close() { l.client.Disconnect(250) }
