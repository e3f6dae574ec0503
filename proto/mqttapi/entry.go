package mqttapi

import "github.com/semnet/semnet/proto/api"

// ResultFromEntry renders root's table entry as the answer to a table query by key: the
// contract lists live instances only (running, with a Namespace IP), each carrying the
// service's RR and Closest addresses and its own Instance IP in ServiceIP. Revision is
// the entry's; a cluster answering from its cache sets its own Revision and Stale.
func ResultFromEntry(e api.TableEntry, key string) TableQueryResult {
	sv := e.Service
	out := TableQueryResult{
		AppName: sv.JobName, QueryKey: key, Revision: e.Revision,
		InstanceList: make([]TableInstance, 0, len(e.Instances)),
	}
	for _, in := range e.Instances {
		if in.Status != "running" || !in.NamespaceIP.IsValid() {
			continue
		}
		ti := TableInstance{
			InstanceNumber: in.Number, InstanceIP: in.InstanceIP, InstanceIPv6: in.InstanceIPv6,
			ClusterID: in.ClusterID, NamespaceIP: in.NamespaceIP, NamespaceIPv6: in.NamespaceIPv6,
			HostIP: in.HostIP, HostPort: in.HostPort, Status: in.Status,
			ServiceIP: []ServiceIP{
				{IPType: IPTypeRR, Address: sv.RRIP, AddressV6: sv.RRIPv6},
				{IPType: IPTypeClosest, Address: sv.ClosestIP, AddressV6: sv.ClosestIPv6},
				{IPType: IPTypeInstanceIP, Address: in.InstanceIP, AddressV6: in.InstanceIPv6},
			},
		}
		if in.Location != nil {
			lat, lon := in.Location.Lat, in.Location.Lon
			ti.Lat, ti.Lon = &lat, &lon
		}
		out.InstanceList = append(out.InstanceList, ti)
	}
	return out
}
