package broker

import (
	"fmt"
	"slices"
	"strings"
	"time"

	mqtt "github.com/mochi-mqtt/server/v2"
	"github.com/mochi-mqtt/server/v2/packets"

	"github.com/semnet/semnet/proto/mqttapi"
)

// hook is the broker's mochi hook: authentication (deny by default), the ACL, the
// slow-client guard on deliveries, and the counting mochi does not do.
type hook struct {
	mqtt.HookBase
	b *Broker
}

func (h *hook) ID() string { return "semnet-broker" }

func (h *hook) Provides(b byte) bool {
	switch b {
	case mqtt.OnConnect, mqtt.OnConnectAuthenticate, mqtt.OnSessionEstablish, mqtt.OnACLCheck,
		mqtt.OnSubscribe, mqtt.OnUnsubscribe, mqtt.OnPublished, mqtt.OnWillSent, mqtt.OnPublishDropped, mqtt.OnPacketEncode, mqtt.OnPacketSent:
		return true
	}
	return false
}

// OnConnect authenticates the client. It runs before OnConnectAuthenticate, whose
// refusal mochi always answers with "bad username or password"; refusing here lets the
// CONNACK say why (not authorized, client identifier not valid).
func (h *hook) OnConnect(cl *mqtt.Client, pk packets.Packet) error {
	c := connOf(cl)
	if c == nil { // not from our listener: cannot happen, but never admit it
		return packets.ErrNotAuthorized
	}
	c.client.Store(cl)
	c.v5.Store(cl.Properties.ProtocolVersion == 5)
	id := pk.Connect.ClientIdentifier
	s, r, detail := h.b.authenticate(c, id, pk)
	if r == 0 && pk.Connect.WillFlag && !mayPublish(id, pk.Connect.WillTopic) {
		// mochi publishes a will without asking the ACL: check it now.
		r, detail = refusedWill, fmt.Sprintf("will topic %q is not below %s", pk.Connect.WillTopic, mqttapi.NodePrefix(id))
	}
	if r != 0 {
		return h.b.refuse(cl, c, id, r, detail)
	}
	h.b.limitSession(cl, s)
	c.sess.Store(s)
	return nil
}

// OnConnectAuthenticate admits exactly the clients OnConnect authenticated.
func (h *hook) OnConnectAuthenticate(cl *mqtt.Client, _ packets.Packet) bool {
	c := connOf(cl)
	return c != nil && c.sess.Load() != nil
}

// OnSessionEstablish runs after authentication, before mochi takes over an older
// session with the same client id.
func (h *hook) OnSessionEstablish(cl *mqtt.Client, _ packets.Packet) {
	if c := connOf(cl); c != nil {
		h.b.established(c, cl)
	}
}

// OnACLCheck decides publishes (write) by mayPublish. Reads are asked for each filter of
// a SUBSCRIBE (after OnSubscribe counted denials) and before each delivery to this
// client, before mochi takes the client's lock: the place to skip, and disconnect, a
// client that no longer keeps up.
func (h *hook) OnACLCheck(cl *mqtt.Client, topic string, write bool) bool {
	c := connOf(cl)
	if c == nil {
		return false
	}
	s := c.sess.Load()
	if s == nil {
		return false
	}
	if write {
		if c.publishes != nil && !c.publishes.Allow() {
			h.b.m.rateLimited.Inc()
			if !c.flooded.Swap(true) {
				h.b.log.Warn("client publishes faster than allowed; refusing its messages beyond the rate",
					"client", s.id, "remote", c.remote, "rate", h.b.cfg.PublishRate, "burst", h.b.cfg.PublishBurst)
			}
			return false
		}
		if mayPublish(s.id, topic) {
			return true
		}
		h.b.m.aclDenied.WithLabelValues("publish").Inc()
		h.b.log.Warn("publish refused by ACL", "client", s.id, "topic", topic)
		return false
	}
	if !h.b.keepsUp(c, cl) {
		h.b.m.dropped.Inc()
		return false
	}
	return maySubscribe(s.id, topic)
}

// OnSubscribe counts and logs the filters the ACL will refuse, and carries out the
// subscriptions mochi would refuse for a packet identifier collision (see collides).
func (h *hook) OnSubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	c := connOf(cl)
	if c == nil {
		return pk
	}
	s := c.sess.Load()
	if s == nil {
		return pk
	}
	collision := h.collides(cl, pk, "subscribe")
	for _, f := range pk.Filters {
		if !maySubscribe(s.id, f.Filter) {
			h.b.m.aclDenied.WithLabelValues("subscribe").Inc()
			h.b.log.Warn("subscription refused by ACL", "client", s.id, "filter", f.Filter)
			continue
		}
		if collision && mqtt.IsValidFilter(f.Filter, false) && h.OnACLCheck(cl, f.Filter, false) { // as mochi checks a filter it grants
			h.b.mqtt.Topics.Subscribe(cl.ID, f)
			cl.State.Subscriptions.Add(f.Filter, f)
		}
	}
	return pk
}

// OnUnsubscribe carries out the unsubscriptions mochi would refuse for a packet
// identifier collision (see collides): an MQTT 3.1.1 UNSUBACK has no codes, so the
// client could not tell, and would get the pushes of a job it dropped.
func (h *hook) OnUnsubscribe(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if h.collides(cl, pk, "unsubscribe") {
		for _, f := range pk.Filters {
			h.b.mqtt.Topics.Unsubscribe(f.Filter, cl.ID)
			cl.State.Subscriptions.Delete(f.Filter)
		}
	}
	return pk
}

// collides reports whether a SUBSCRIBE or UNSUBSCRIBE carries the packet identifier of
// a delivery to the client that it has not acknowledged yet. mochi keeps the client's
// identifiers and its own in one table (MQTT keeps them apart: each side numbers its
// own packets) and refuses such a packet: a SUBACK of 0x80, or an UNSUBACK that does
// nothing. Clients that never read SUBACK codes (the reference node) would wait for
// pushes that never come, so the hooks carry the packet out themselves; the SUBACK
// still says 0x80, and a client that subscribes again gets a plain grant. (The
// cluster's own messages go out at QoS 0 and take no identifier; a node meets this
// only with QoS 1 messages of its own topics delivered back to it.)
func (h *hook) collides(cl *mqtt.Client, pk packets.Packet, what string) bool {
	if _, ok := cl.State.Inflight.Get(pk.PacketID); !ok {
		return false
	}
	h.b.m.idCollisions.WithLabelValues(what).Inc()
	h.b.log.Debug("packet identifier of an unacknowledged delivery; carrying the packet out despite mochi",
		"client", cl.ID, "packet", what, "packet_id", pk.PacketID)
	return true
}

// OnPublished counts the messages nodes published (the cluster's own are not counted)
// and hands them to the cluster (Broker.Handle). mochi calls it in the sender's reader
// goroutine once it took the message: after the ACL and rate checks, the QoS 1
// acknowledgement and the deliveries to subscribers.
func (h *hook) OnPublished(cl *mqtt.Client, pk packets.Packet) {
	if cl.Net.Inline {
		return
	}
	h.b.m.received.Inc()
	h.b.received(cl.ID, pk)
}

// OnWillSent hands a node's will, which mochi published for it when its connection
// broke, to the cluster like its other messages (the ACL checked its topic at CONNECT;
// wills are never delayed here, see limitSession).
func (h *hook) OnWillSent(cl *mqtt.Client, pk packets.Packet) {
	h.b.received(cl.ID, pk)
}

// OnPublishDropped: mochi's queue of messages for cl is full. mochi drops the message
// silently; here the client is disconnected, since it cannot keep up.
func (h *hook) OnPublishDropped(cl *mqtt.Client, _ packets.Packet) {
	h.b.m.dropped.Inc()
	if c := connOf(cl); c != nil && c.drop(dropQueue) {
		h.b.slowClient(c, dropQueue, "max_queued_messages", h.b.cfg.MaxQueuedMessages)
	}
}

// OnPacketEncode tells MQTT 5 clients the maximum packet size in CONNACK, which mochi
// does not ([MQTT-3.2.2-15]: they must not send larger packets).
func (h *hook) OnPacketEncode(cl *mqtt.Client, pk packets.Packet) packets.Packet {
	if pk.FixedHeader.Type == packets.Connack && cl.Properties.ProtocolVersion == 5 && pk.ReasonCode < packets.ErrUnspecifiedError.Code {
		pk.Properties.MaximumPacketSize = uint32(h.b.cfg.MaxPacketSize)
	}
	return pk
}

// OnPacketSent counts messages handed to nodes.
func (h *hook) OnPacketSent(_ *mqtt.Client, pk packets.Packet, _ []byte) {
	if pk.FixedHeader.Type == packets.Publish {
		h.b.m.sent.Inc()
	}
}

// refusal is why a connection was refused; its String is the metric label.
type refusal uint8

const (
	refusedBadCredentials refusal = iota + 1
	refusedClientIDMismatch
	refusedNoCredentials
	refusedInvalidClientID
	refusedWill
	refusedAuthMethod
	refusedTLS
	lastRefusal = refusedTLS
)

func (r refusal) String() string {
	switch r {
	case refusedBadCredentials:
		return "bad_credentials"
	case refusedClientIDMismatch:
		return "client_id_mismatch"
	case refusedNoCredentials:
		return "no_credentials"
	case refusedInvalidClientID:
		return "invalid_client_id"
	case refusedWill:
		return "will_denied"
	case refusedAuthMethod:
		return "auth_method"
	case refusedTLS:
		return "tls_handshake"
	}
	return "unknown"
}

// codes returns the CONNACK codes for r: MQTT 5 reason code, MQTT 3.1.1 return code
// ([MQTT-3.2.2-5]: 0x04 bad user name or password, 0x05 not authorized, 0x02 identifier
// rejected). mochi's own v5-to-v3 table maps "bad username or password" to 0x05.
func (r refusal) codes() (v5, v3 packets.Code) {
	switch r {
	case refusedBadCredentials:
		return packets.ErrBadUsernameOrPassword, packets.ErrMalformedUsernameOrPassword
	case refusedInvalidClientID:
		return packets.ErrClientIdentifierNotValid, packets.Err3ClientIdentifierNotValid
	case refusedAuthMethod:
		return packets.ErrBadAuthenticationMethod, packets.Err3NotAuthorized
	}
	return packets.ErrNotAuthorized, packets.Err3NotAuthorized
}

// authenticate decides who a connecting client is. The method follows from what it
// sends: a username means password authentication (a client certificate is then just
// transport security); else a verified client certificate; else anonymous, if allowed.
// Whatever the method, the identity is the client id, and must be a usable one.
func (b *Broker) authenticate(c *conn, id string, pk packets.Packet) (*session, refusal, string) {
	if err := checkIdentity(id); err != nil {
		return nil, refusedInvalidClientID, err.Error()
	}
	if pk.Properties.AuthenticationMethod != "" {
		return nil, refusedAuthMethod, fmt.Sprintf("MQTT 5 enhanced authentication (%q) is not supported", pk.Properties.AuthenticationMethod)
	}
	if pk.Connect.UsernameFlag || pk.Connect.PasswordFlag {
		if !pk.Connect.UsernameFlag {
			return nil, refusedBadCredentials, "password without username"
		}
		return b.authPassword(id, string(pk.Connect.Username), string(pk.Connect.Password))
	}
	if c.names != nil {
		if slices.Contains(c.names, id) {
			return &session{id: id, method: methodCertificate}, 0, ""
		}
		return nil, refusedClientIDMismatch, fmt.Sprintf("client certificate is for %q, not for the client id", strings.Join(c.names, `", "`))
	}
	if b.cfg.AllowAnonymous {
		return &session{id: id, method: methodAnonymous}, 0, ""
	}
	return nil, refusedNoCredentials, "no username and no client certificate, and anonymous access is off"
}

func (b *Broker) authPassword(id, user, password string) (*session, refusal, string) {
	cs := b.creds.Load()
	if cs == nil {
		return nil, refusedBadCredentials, "password authentication is off (no credentials file)"
	}
	if !cs.check(user, password) {
		detail := "wrong password"
		if e, ok := cs.users[user]; !ok {
			detail = "no such username in the credentials file"
		} else if !e.allow {
			detail = "username has allow: false in the credentials file"
		}
		return nil, refusedBadCredentials, detail
	}
	if user != id {
		return nil, refusedClientIDMismatch, fmt.Sprintf("username %q is not the client id", user)
	}
	return &session{id: id, method: methodPassword, cred: cs.users[user]}, 0, ""
}

// refuse counts, logs and answers a refused CONNECT; mochi then closes the connection.
func (b *Broker) refuse(cl *mqtt.Client, c *conn, id string, r refusal, detail string) error {
	b.m.refused.WithLabelValues(r.String()).Inc()
	b.log.Warn("connection refused", "client", id, "remote", c.remote, "reason", r.String(), "detail", detail)
	v5, v3 := r.codes()
	if cl.Properties.ProtocolVersion == 5 {
		_ = b.mqtt.SendConnack(cl, v5, false, nil)
	} else {
		_ = cl.WritePacket(packets.Packet{FixedHeader: packets.FixedHeader{Type: packets.Connack}, ReasonCode: v3.Code})
	}
	return v5
}

// limitSession bounds an admitted client's keepalive to [KeepAliveMin, KeepAliveMax]
// (0, no keepalive, counts as above the maximum): mochi's read deadline is 1.5 times the
// keepalive, so this bounds how long a dead connection can linger. MQTT 5 clients are
// told (Server Keep Alive); MQTT 3 clients cannot be, so one whose keepalive is above the
// maximum is disconnected after 1.5 times the maximum without traffic.
// Sessions end with the connection (MaximumSessionExpiryInterval 0), so a will is
// published at once ([MQTT-3.1.3-9]: a will delay ends when the session does).
func (b *Broker) limitSession(cl *mqtt.Client, s *session) {
	lo, hi := uint16(b.cfg.KeepAliveMin/time.Second), uint16(b.cfg.KeepAliveMax/time.Second)
	asked := cl.State.Keepalive
	ka := asked
	if ka == 0 || ka > hi {
		ka = hi
	}
	ka = max(ka, lo)
	if ka != asked {
		cl.State.Keepalive = ka
		if cl.Properties.ProtocolVersion == 5 {
			cl.State.ServerKeepalive = true
		} else if asked == 0 || asked > hi {
			b.log.Warn("client keepalive above the broker's maximum; it will be disconnected when idle",
				"client", s.id, "keepalive_s", asked, "max_s", hi, "idle_limit", time.Duration(hi)*time.Second*3/2)
		}
	}
	cl.Properties.Will.WillDelayInterval = 0
}

// keepsUp reports whether a message may still be queued for cl: not if its connection is
// closing, and not if it has MaxInflight QoS 1/2 messages unacknowledged, which makes it
// too slow: it is disconnected (mochi would drop the message and log each one).
func (b *Broker) keepsUp(c *conn, cl *mqtt.Client) bool {
	if c.gone() {
		return false
	}
	if n := cl.State.Inflight.Len(); n >= b.cfg.MaxInflight {
		if c.drop(dropInflight) {
			b.slowClient(c, dropInflight, "unacknowledged", n)
		}
		return false
	}
	return true
}

// slowClient counts and logs a slow client the broker disconnected.
func (b *Broker) slowClient(c *conn, r dropReason, args ...any) {
	b.m.slowDisconnects.WithLabelValues(string(r)).Inc()
	b.log.Warn("client too slow; disconnected",
		append([]any{"client", c.clientID(), "remote", c.remote, "reason", string(r)}, args...)...)
}
