package broker

import (
	"errors"
	"strings"
	"unicode"
	"unicode/utf8"

	mqtt "github.com/mochi-mqtt/server/v2"

	"github.com/semnet/semnet/proto/mqttapi"
)

// maxIdentityLen bounds a worker id; MQTT allows 65535 bytes, no worker id is that long.
const maxIdentityLen = 256

// checkIdentity says why id cannot be a worker identity, or returns nil. The ACL grants
// an identity the subtree "nodes/<id>/", so an id must be exactly one topic level: with a
// '/' worker "a" would own "nodes/a/b/..." of worker "a/b", and '+' or '#' would make
// the prefix a wildcard. "inline" is mochi's own client, which a network client taking
// its id would replace.
func checkIdentity(id string) error {
	switch {
	case id == "":
		return errors.New("client id is empty (it must be the worker id)")
	case len(id) > maxIdentityLen:
		return errors.New("client id is longer than 256 bytes")
	case id == mqtt.InlineClientId:
		return errors.New(`client id "inline" is reserved for the cluster itself`)
	case strings.HasPrefix(id, "$"):
		return errors.New("client id starts with '$', which MQTT reserves for the broker")
	case strings.ContainsAny(id, "/+#"):
		return errors.New("client id contains '/', '+' or '#', which would reach other nodes' topics")
	case !utf8.ValidString(id):
		return errors.New("client id is not valid UTF-8")
	case strings.ContainsFunc(id, unicode.IsControl):
		return errors.New("client id contains control characters")
	}
	return nil
}

// mayPublish reports whether worker id may publish to topic: only below its own
// "nodes/<id>/". Nobody but the cluster (mochi's inline client, which bypasses the ACL)
// publishes under "jobs/".
func mayPublish(id, topic string) bool {
	return ownTopic(topic, id) && !strings.ContainsAny(topic, "+#")
}

// maySubscribe reports whether worker id may subscribe to filter: filters below its own
// "nodes/<id>/", one job's "jobs/<key>/updates_available", or all jobs'
// mqttapi.UpdatesFilter. Everything else ("#", "nodes/+/...", "$SYS/#", shared
// subscriptions) is refused. It also decides whether a message on a topic may be
// delivered to id, since a topic is a filter without wildcards.
func maySubscribe(id, filter string) bool {
	if ownTopic(filter, id) {
		return true
	}
	key, ok := mqttapi.ParseUpdatesTopic(filter)
	return ok && (key == "+" || !strings.ContainsAny(key, "+#"))
}

// ownTopic reports whether topic (or filter) is below mqttapi.NodePrefix(id), without
// building a string.
func ownTopic(topic, id string) bool {
	_, ok := mqttapi.UnderNode(topic, id)
	return ok
}
