// Package broker is the cluster's embedded MQTT broker (CONTRACT.md "Cluster MQTT"),
// which worker nodes connect to: mochi-mqtt with semnet's authentication, ACL and limits
// as a mochi hook, and a connection wrapper that keeps one slow client from stalling the
// others. Operators: see README.md (credentials file, adding a node, TLS, metrics).
//
// # Identity and authentication
//
// Deny by default. A client's identity is its worker id, which is also its MQTT client
// id; it must be one topic level (no '/', '+', '#'). The method follows from what the
// client sends:
//   - a username: username/password from the credentials file; the username must equal
//     the client id (a client certificate, if any, is then only transport security);
//   - no username, a client certificate verified against Config.ClientCAFile (mutual
//     TLS): its Common Name or one of its DNS SANs must equal the client id. This is how
//     the reference worker node connects (MQTT 3.1.1, client id = worker id, no
//     username);
//   - neither: anonymous, only with Config.AllowAnonymous; the client id is the identity.
//
// A refused CONNECT gets the CONNACK code for its reason (0x04 bad user name or password,
// 0x05 not authorized, 0x02 identifier rejected; MQTT 5: 0x86, 0x87, 0x85), is logged with
// the client id and counted by reason. A certificate from another CA fails the TLS
// handshake.
//
// # Credentials file
//
// mochi's auth ledger format, restricted to exact usernames (YAML, or the same as JSON):
//
//	auth:
//	  - username: worker-1      # the worker id, which is also its MQTT client id
//	    password: s3cret        # plain text, or a bcrypt hash ("$2a$"/"$2b$"/"$2y$", 60 chars)
//	    allow: true             # required; false blocks the node but keeps its entry
//
// Unknown keys (mochi's "acl", "client", "remote") and "*" patterns are errors, so a rule
// that would not be enforced is never silently ignored. Plain passwords are compared in
// constant time; bcrypt hashes (`htpasswd -nbBC 10 "" pw | cut -d: -f2`) keep the file
// harmless if read. To add a node, add its entry: the broker checks the file's
// modification time and size every Config.CredentialsPoll and reloads it when they
// change, and Reload (SIGHUP in the CLI) reloads at once. A file that fails to parse is
// logged and the previous credentials stay in force. Clients whose entry is removed,
// set to allow: false or given a new password are disconnected on reload.
//
// # ACL
//
// For every identity, whatever the method: publish only below "nodes/<id>/"
// (mqttapi.NodePrefix); subscribe only to filters below "nodes/<id>/" and to
// "jobs/<key>/updates_available" of one job or of all (mqttapi.UpdatesFilter). "#",
// "nodes/#", "nodes/+/net/#", other nodes' topics, "$SYS/#" and shared subscriptions are
// refused. A will topic must be publishable (mochi publishes wills without asking the
// ACL), else the CONNECT is refused. Only the cluster, through Publish (mochi's inline
// client, which bypasses the ACL), publishes under "jobs/". A refused subscription gets
// reason 0x80 (MQTT 5: 0x87); a refused QoS 1 publish disconnects an MQTT 3 client (mochi;
// MQTT 5 gets PUBACK 0x87), a QoS 0 one is dropped. Every refusal is logged and counted.
//
// # Limits, and the mochi pitfalls they guard against
//
//   - Slow clients. mochi writes to a socket holding the client's lock, which every
//     publisher takes to number a QoS 1 message for that client: one client that stops
//     reading would stall the cluster's Publish and all nodes publishing to its topics.
//     Here mochi writes into a per-connection buffer (never blocking) that a goroutine of
//     the connection drains into the socket. A client is disconnected, and counted by
//     reason, when its unsent bytes exceed MaxPendingBytes, its socket takes no 32 KiB in
//     WriteTimeout, it leaves MaxInflight QoS 1/2 messages unacknowledged (the
//     cluster's messages go out at QoS 0: these are its own, delivered back), or mochi's
//     queue for it (MaxQueuedMessages) is full; messages for it meanwhile are dropped
//     and counted.
//   - Oversized packets. mochi closes such a connection silently. Here the connection
//     reader follows the packet framing and stops at the header of a packet larger than
//     MaxPacketSize, before its body is read: the client is logged with its id, counted,
//     sent DISCONNECT with reason Packet Too Large (MQTT 5) and disconnected. MQTT 5
//     clients learn the limit from CONNACK.
//   - Keepalive. A client's keepalive is bounded to [KeepAliveMin, KeepAliveMax] (0, no
//     keepalive, counts as above); mochi drops a client silent for 1.5 times it. MQTT 5
//     clients are told (Server Keep Alive); MQTT 3 clients cannot be, so one asking for
//     more is disconnected when idle that long (logged when it connects). A connection
//     must send CONNECT (after its TLS handshake) within ConnectTimeout.
//   - Sessions end with their connection (no persistent sessions; nodes use clean
//     sessions), retained messages and topic aliases are off.
//   - Floods. Each connection may publish PublishRate messages per second on average,
//     PublishBurst at once (a token bucket); beyond, a publish is refused as the ACL
//     refuses one (MQTT 5: PUBACK 0x87; MQTT 3.1.1 QoS 1: disconnected; QoS 0: dropped),
//     counted, and logged once per connection. Refused messages never reach a Handler.
//
// # Goroutines
//
// The Handler given to Handle runs in the goroutine that reads the sending node's
// connection: each node's messages are handled one at a time and in order, and a slow
// handler delays only that node. Publish never waits for a client and may be called from
// any goroutine, handlers included. It writes a message into its subscribers' connection
// buffers itself, encoded once, when they all speak MQTT 3.1.1, and hands it to mochi
// otherwise (see Broker.deliver): called from a handler, as a cache hit's answer is, the
// answer leaves from the goroutine that read the query. OnDisconnect callbacks run in the disconnected
// connection's goroutine, after its last handler call. Close waits for all of them.
package broker
