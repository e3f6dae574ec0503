package nodes

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"github.com/semnet/semnet/cluster/cache"
	"github.com/semnet/semnet/cluster/report"
	"github.com/semnet/semnet/cluster/table"
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/proto/api/client"
	"github.com/semnet/semnet/proto/mqttapi"
	"github.com/semnet/semnet/shared/geo"
)

func (s *Server) tableQuery(nodeID string, payload []byte) error {
	var q mqttapi.TableQuery
	resultTopic := mqttapi.NodeTopic(nodeID, mqttapi.SuffixTableQueryResult)
	if err := decode(payload, &q); err != nil {
		s.publishJSON(resultTopic, errorResult(q, "", mqttapi.QueryErrInvalid, err))
		return err
	}
	key := q.Key()
	if key == "" {
		err := invalidf("sname or sip is required")
		s.publishJSON(resultTopic, errorResult(q, "", mqttapi.QueryErrInvalid, err))
		return err
	}
	if e, ok := s.table.Cached(s.ctx, key); ok {
		s.m.queries.WithLabelValues("hit").Inc()
		s.answer(nodeID, resultTopic, key, e)
		return nil
	}
	// A miss waits for root, in a goroutine of its own so the node's other messages
	// (and its later queries that hit) are not held up behind it.
	select {
	case s.misses <- struct{}{}:
	default:
		s.m.queries.WithLabelValues("error").Inc()
		err := fmt.Errorf("cluster busy: %d table queries already wait for root", cap(s.misses))
		s.publishJSON(resultTopic, errorResult(q, key, mqttapi.QueryErrUnavailable, err))
		return err
	}
	go func() {
		defer func() { <-s.misses }()
		e, err := s.table.Lookup(s.ctx, key)
		switch {
		case err == nil:
			s.m.queries.WithLabelValues("miss").Inc()
			s.answer(nodeID, resultTopic, key, e)
		case errors.Is(err, table.ErrUnknown):
			s.m.queries.WithLabelValues("unknown").Inc()
			s.publishJSON(resultTopic, errorResult(q, key, mqttapi.QueryErrUnknown, err))
		default:
			s.m.queries.WithLabelValues("error").Inc()
			if client.Temporary(err) || errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("root is unreachable and %q is not cached: %w", key, err)
			}
			// Whatever else failed, root did not say the key names nothing.
			s.publishJSON(resultTopic, errorResult(q, key, mqttapi.QueryErrUnavailable, err))
			s.log.Warn("table query failed", "node", nodeID, "key", key, "err", err)
		}
	}()
	return nil
}

func errorResult(q mqttapi.TableQuery, key, code string, err error) mqttapi.TableQueryResult {
	return mqttapi.TableQueryResult{AppName: q.SName, QueryKey: key, InstanceList: []mqttapi.TableInstance{},
		Error: err.Error(), ErrorCode: code}
}

// answer sends the entry and records the node's interest under the key it used.
func (s *Server) answer(nodeID, topic, key string, e *cache.Entry) {
	if s.log.Enabled(s.ctx, slog.LevelDebug) { // the hot path: no arguments boxed unless asked
		s.log.Debug("table query answered", "node", nodeID, "key", key, "job", e.JobName(), "revision", e.Revision)
	}
	if job := e.JobName(); s.in.query(nodeID, key, job) && !s.table.Holding(job) {
		// The job's hold was released since the lookup (no node needed it): take it
		// again, or the interest at root may be gone.
		s.recheck(job)
	}
	b, err := s.encoded(e, key)
	if err == nil {
		err = s.pub.Publish(topic, b)
	}
	if err != nil {
		s.log.Error("publish failed", "topic", topic, "err", err)
	}
}

// encodedResult is a rendered answer kept for the next query by the same key.
type encodedResult struct {
	entry   *cache.Entry
	rev     uint64
	fetched time.Time
	stale   bool
	b       []byte
}

// encoded returns the JSON answer to a query by key, rendering it only when the entry
// (or staleness) changed since the last query by that key: hits, the bulk of the
// cluster's work, then cost no encoding. The memo holds one answer per key in use; keys
// of deleted jobs are dropped with them.
func (s *Server) encoded(e *cache.Entry, key string) ([]byte, error) {
	stale := s.table.Stale()
	if v, ok := s.memo.Load(key); ok {
		r := v.(*encodedResult)
		if r.stale == stale && (r.entry == e || r.rev == e.Revision && r.fetched.Equal(e.Fetched)) {
			return r.b, nil
		}
	}
	b, err := json.Marshal(s.render(e, key))
	if err != nil {
		return nil, fmt.Errorf("encode answer for %s: %w", key, err)
	}
	s.memo.Store(key, &encodedResult{entry: e, rev: e.Revision, fetched: e.Fetched, stale: stale, b: b})
	return b, nil
}

// render turns a cached entry into the contract's result for a query by key.
func (s *Server) render(e *cache.Entry, key string) mqttapi.TableQueryResult {
	out := mqttapi.ResultFromEntry(e.Table, key)
	out.Revision, out.Stale = e.Revision, s.table.Stale()
	return out
}

// Changed pushes a job's change to the nodes interested in it: on the job's own updates
// topic and on every key (IP) nodes queried it by, each with the fresh entry as a query
// by that key would answer it. e is nil when the job was deleted; at is when root logged
// the change (zero: not known).
func (s *Server) Changed(job string, e *cache.Entry, at time.Time) {
	if !at.IsZero() {
		s.m.pushDelay.Observe(time.Since(at).Seconds())
	}
	keys := s.in.keys(job)
	if !slices.Contains(keys, job) {
		keys = append(keys, job) // nodes running the job listen on its own topic
	}
	if s.log.Enabled(s.ctx, slog.LevelDebug) {
		var rev uint64
		if e != nil {
			rev = e.Revision
		}
		s.log.Debug("pushing a change", "job", job, "keys", keys, "revision", rev, "deleted", e == nil)
	}
	for _, key := range keys {
		msg := mqttapi.UpdatesAvailable{Type: mqttapi.UpdateDeleted, ChangedAt: at}
		if e != nil {
			r := s.render(e, key)
			msg = mqttapi.UpdatesAvailable{Type: mqttapi.UpdateChanged, Table: &r, ChangedAt: at}
		}
		s.publishJSON(mqttapi.UpdatesTopic(key), msg)
		s.m.pushes.Inc()
	}
	if e == nil {
		for _, key := range keys {
			s.memo.Delete(key)
		}
		s.in.forgetJob(job)
	}
}

func (s *Server) subnet(nodeID string, payload []byte) error {
	topic := mqttapi.NodeTopic(nodeID, mqttapi.SuffixSubnetResult)
	var req mqttapi.SubnetRequest
	if err := decode(payload, &req); err != nil {
		s.publishJSON(topic, mqttapi.SubnetResult{Error: err.Error()})
		return err
	}
	if req.Method != mqttapi.SubnetMethodGet {
		err := invalidf("METHOD %q: only %q is served (subnets are released by root)", req.Method, mqttapi.SubnetMethodGet)
		s.publishJSON(topic, mqttapi.SubnetResult{Error: err.Error()})
		return err
	}
	// Allocation may wait for root (bounded by the pool's timeout); the reference node
	// waits for it before doing anything else, so holding its queue is fine.
	sn, err := s.subnets.Get(s.ctx, nodeID)
	if err != nil {
		s.publishJSON(topic, mqttapi.SubnetResult{Error: "no subnet: " + err.Error()})
		return fmt.Errorf("subnet for %s: %w", nodeID, err)
	}
	s.publishJSON(topic, mqttapi.SubnetResult{Address: sn.SubnetV4.Addr(), AddressV6: sn.SubnetV6.Addr()})
	return nil
}

func (s *Server) location(lat, lon *float64) (*geo.Point, error) {
	if lat == nil && lon == nil {
		return s.opt.Location, nil
	}
	if lat == nil || lon == nil {
		return nil, invalidf("lat and lon go together")
	}
	p := geo.Point{Lat: *lat, Lon: *lon}
	if err := p.Validate(); err != nil {
		return nil, invalidf("location: %v", err)
	}
	return &p, nil
}

func (s *Server) deployed(nodeID string, payload []byte) error {
	var d mqttapi.Deployed
	if err := decode(payload, &d); err != nil {
		return err
	}
	if err := validJob(d.AppName); err != nil {
		return err
	}
	if d.InstanceNumber < 0 {
		return invalidf("instance_number %d must not be negative", d.InstanceNumber)
	}
	p := api.Placement{Status: "running", ClusterID: s.opt.ClusterID}
	if d.Status == "failed" || d.Status == "FAILED" {
		p.Status = "failed"
	}
	var err error
	if p.NamespaceIP, err = parseAddr("nsip", d.NSIP, p.Status == "running"); err != nil {
		return err
	}
	if p.NamespaceIPv6, err = parseAddr("nsipv6", d.NSIPv6, false); err != nil {
		return err
	}
	if p.HostIP, err = parseAddr("host_ip", d.HostIP, p.Status == "running"); err != nil {
		return err
	}
	if p.HostIP.IsValid() && (d.HostPort < 1 || d.HostPort > 65535) {
		return invalidf("host_port %d must be between 1 and 65535", d.HostPort)
	}
	p.HostPort = int(d.HostPort)
	if p.Location, err = s.location(d.Lat, d.Lon); err != nil {
		return err
	}
	rep := report.Report{Node: nodeID, Job: d.AppName, Instance: int(d.InstanceNumber), Placement: p}
	if p.Status == "running" {
		// A re-announce after a reconnection is no new deployment for the interests.
		var fresh bool
		fresh, rep.Done = s.live.running(nodeID, d.AppName, rep.Instance, p.HostIP, p.HostPort)
		if fresh {
			s.deploy(nodeID, d.AppName)
		}
	} else if s.live.stopped(nodeID, d.AppName, rep.Instance) && s.in.undeploy(nodeID, d.AppName) {
		s.recheck(d.AppName)
	}
	s.reports.Enqueue(rep)
	return nil
}

// deploy records that node runs an instance of job; a job this replica's nodes start
// needing that it does not hold is held and followed, so the node hears of its changes.
func (s *Server) deploy(nodeID, job string) {
	if s.in.deploy(nodeID, job) && !s.table.Holding(job) {
		s.recheck(job)
	}
}

func (s *Server) undeployed(nodeID string, payload []byte) error {
	var u mqttapi.Undeployed
	if err := decode(payload, &u); err != nil {
		return err
	}
	if err := validJob(u.AppName); err != nil {
		return err
	}
	if u.InstanceNumber < 0 {
		return invalidf("instance_number %d must not be negative", u.InstanceNumber)
	}
	p := api.Placement{Status: "stopped", ClusterID: s.opt.ClusterID}
	var err error
	if p.HostIP, err = parseAddr("host_ip", u.HostIP, false); err != nil {
		return err
	}
	if p.HostIP.IsValid() && (u.HostPort < 1 || u.HostPort > 65535) {
		return invalidf("host_port %d must be between 1 and 65535", u.HostPort)
	}
	p.HostPort = int(u.HostPort)
	s.reports.Enqueue(report.Report{Node: nodeID, Job: u.AppName, Instance: int(u.InstanceNumber), Placement: p})
	if s.live.stopped(nodeID, u.AppName, int(u.InstanceNumber)) && s.in.undeploy(nodeID, u.AppName) {
		s.recheck(u.AppName)
	}
	return nil
}

func (s *Server) addressChanged(nodeID string, payload []byte) error {
	var a mqttapi.AddressChanged
	if err := decode(payload, &a); err != nil {
		return err
	}
	if err := validJob(a.AppName); err != nil {
		return err
	}
	hostIP, err := parseAddr("host_ip", a.HostIP, true)
	if err != nil {
		return err
	}
	if a.HostPort < 1 || a.HostPort > 65535 {
		return invalidf("host_port %d must be between 1 and 65535", a.HostPort)
	}
	// Root takes a whole placement: the namespace addresses come from the entry.
	e, err := s.table.Lookup(s.ctx, a.AppName)
	if err != nil {
		return fmt.Errorf("address change of %s instance %d: %w", a.AppName, a.InstanceNumber, err)
	}
	for _, in := range e.Table.Instances {
		if in.Number == int(a.InstanceNumber) {
			// ClusterID as in every report: root orders a cluster's reports by their
			// sequence only when it knows whose they are, so without it a late address
			// change could undo a newer report.
			p := api.Placement{Status: "running", ClusterID: s.opt.ClusterID, NamespaceIP: in.NamespaceIP, NamespaceIPv6: in.NamespaceIPv6,
				HostIP: hostIP, HostPort: int(a.HostPort), Location: in.Location}
			rep := report.Report{Node: nodeID, Job: a.AppName, Instance: int(a.InstanceNumber), Placement: p}
			var fresh bool
			if fresh, rep.Done = s.live.running(nodeID, a.AppName, rep.Instance, hostIP, rep.Placement.HostPort); fresh {
				s.deploy(nodeID, a.AppName)
			}
			s.reports.Enqueue(rep)
			return nil
		}
	}
	return invalidf("%s has no running instance %d", a.AppName, a.InstanceNumber)
}

func (s *Server) interestRemove(nodeID string, payload []byte) error {
	var r mqttapi.InterestRemove
	if err := decode(payload, &r); err != nil {
		return err
	}
	if r.AppName == "" {
		return invalidf("appname is required")
	}
	job, unused := s.in.remove(nodeID, r.AppName)
	s.log.Debug("interest removed", "node", nodeID, "key", r.AppName, "job", job, "unused", unused)
	if unused {
		s.recheck(job)
	}
	return nil
}

// gatewayRegister checks a gateway node's registration and hands it to the relay, which
// answers on gateway/config; a bad one is answered there at once.
func (s *Server) gatewayRegister(nodeID string, payload []byte) error {
	topic := mqttapi.NodeTopic(nodeID, mqttapi.SuffixGatewayConfig)
	var req mqttapi.GatewayRegister
	err := decode(payload, &req)
	switch {
	case err != nil:
	case s.opt.Gateways == nil:
		err = invalidf("this cluster does not serve gateways")
	case !req.PublicIP.IsValid() && !req.PublicIPv6.IsValid():
		err = invalidf("a gateway needs a public address: public_ip, public_ip_v6 or both")
	case req.PublicIP.IsValid() && !req.PublicIP.Is4(), req.PublicIPv6.IsValid() && !req.PublicIPv6.Is6():
		err = invalidf("public_ip must be IPv4 and public_ip_v6 IPv6 (got %v, %v)", req.PublicIP, req.PublicIPv6)
	case !req.NamespaceIP.Is4() || !req.HostIP.IsValid():
		err = invalidf("namespace_ip (IPv4) and host_ip are required")
	case req.HostPort < 1 || req.HostPort > 65535:
		err = invalidf("host_port %d is not a UDP port", req.HostPort)
	}
	if err == nil && (req.Lat != nil || req.Lon != nil) {
		_, err = s.location(req.Lat, req.Lon)
	}
	if err != nil {
		s.publishJSON(topic, mqttapi.GatewayConfig{Error: err.Error()})
		return err
	}
	s.opt.Gateways.Register(nodeID, req)
	return nil
}
