package rest

import (
	"github.com/semnet/semnet/proto/api"
	"github.com/semnet/semnet/root/registry"
	"github.com/semnet/semnet/root/store"
)

func toCluster(c store.Cluster) api.Cluster {
	return api.Cluster{
		ClusterRequest: api.ClusterRequest{ID: c.ID, Name: c.Name, Address: c.Address, Port: c.Port, Location: c.Location, RadiusKM: c.RadiusKM},
		Status:         c.Status, LastSeen: c.LastSeen, CreatedAt: c.CreatedAt,
	}
}

func toService(s store.Service) api.Service {
	return api.Service{
		ID: s.ID, JobName: s.JobName(), App: s.App, AppNS: s.AppNS, Service: s.Name, ServiceNS: s.NS,
		RRIP: s.RR.V4, RRIPv6: s.RR.V6, ClosestIP: s.Closest.V4, ClosestIPv6: s.Closest.V6,
		CreatedAt: s.CreatedAt, Revision: s.Revision,
	}
}

func toInstance(in store.Instance) api.Instance {
	out := api.Instance{
		Number: in.Number, InstanceIP: in.IP.V4, InstanceIPv6: in.IP.V6, ClusterID: in.ClusterID,
		NamespaceIP: in.NamespaceIP.V4, NamespaceIPv6: in.NamespaceIP.V6, HostIP: in.HostIP, HostPort: in.HostPort,
		Location: in.Location, Status: in.Status, UpdatedAt: in.UpdatedAt, Revision: in.Revision,
	}
	if sb := in.Standby; sb != nil {
		out.Standby = &api.Place{ClusterID: sb.ClusterID, NamespaceIP: sb.NamespaceIP.V4, NamespaceIPv6: sb.NamespaceIP.V6, HostIP: sb.HostIP, HostPort: sb.HostPort}
	}
	return out
}

func toEntry(e registry.Entry) api.TableEntry {
	out := api.TableEntry{Service: toService(e.Service), Instances: make([]api.Instance, len(e.Instances)), Revision: e.Revision}
	for i, in := range e.Instances {
		out.Instances[i] = toInstance(in)
		if e.DistanceKM != nil && e.DistanceKM[i] >= 0 {
			d := e.DistanceKM[i]
			out.Instances[i].DistanceKM = &d
		}
	}
	if e.Matched >= 0 {
		m := e.Matched
		out.MatchedInstance = &m
	}
	return out
}

func toSubnet(s store.Subnet) api.Subnet {
	return api.Subnet{SubnetV4: s.V4, SubnetV6: s.V6, ClusterID: s.ClusterID, NodeID: s.NodeID, CreatedAt: s.CreatedAt}
}

func toChange(c store.Change) api.Change {
	return api.Change{Revision: c.Revision, Kind: c.Kind, Op: c.Op, ServiceID: c.ServiceID, JobName: c.JobName, Instance: c.Instance,
		Object: c.Object, Time: c.Time}
}

// toGateway shows a gateway with its instance's placement and Instance IPs.
func toGateway(g registry.Gateway) api.Gateway {
	in := g.Instance
	return api.Gateway{
		ID: g.ID,
		GatewayRequest: api.GatewayRequest{ClusterID: g.ClusterID, PublicIP: g.PublicV4, PublicIPv6: g.PublicV6,
			NamespaceIP: in.NamespaceIP.V4, NamespaceIPv6: in.NamespaceIP.V6, HostIP: in.HostIP, HostPort: in.HostPort, Location: in.Location},
		InstanceNumber: g.InstanceNumber, InstanceIP: in.IP.V4, InstanceIPv6: in.IP.V6, Status: in.Status,
		CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt,
	}
}

func toExposure(e store.Exposure) api.Exposure {
	out := api.Exposure{
		ID: e.ID,
		ExposureRequest: api.ExposureRequest{Protocol: e.Protocol, PublicPort: e.PublicPort, ServicePort: e.ServicePort,
			Policy: e.Policy, Gateway: e.Gateway},
		ServiceID: e.ServiceID, JobName: e.JobName, TargetIP: e.Target.V4, TargetIPv6: e.Target.V6,
		CreatedAt: e.CreatedAt, Revision: e.Revision,
	}
	if e.InstanceNumber >= 0 {
		n := e.InstanceNumber
		out.InstanceNumber = &n
	}
	return out
}

func toExposureList(es []store.Exposure, rev uint64) api.ExposureList {
	out := api.ExposureList{Items: make([]api.Exposure, len(es)), Revision: rev}
	for i, e := range es {
		out.Items[i] = toExposure(e)
	}
	return out
}
