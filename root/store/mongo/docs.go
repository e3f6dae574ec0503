package mongo

import (
	"fmt"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/bson/primitive"

	"github.com/semnet/semnet/root/store"
	"github.com/semnet/semnet/shared/geo"
)

// The documents as stored. Addresses are strings (their text form) so they are readable
// in the shell and unique indexes compare them exactly; times are BSON dates
// (milliseconds).

type pairDoc struct {
	V4 string `bson:"v4"`
	V6 string `bson:"v6"`
}

func toPair(p store.AddrPair) pairDoc { return pairDoc{V4: addrString(p.V4), V6: addrString(p.V6)} }

type pointDoc struct {
	Lat float64 `bson:"lat"`
	Lon float64 `bson:"lon"`
}

type serviceDoc struct {
	ID        string    `bson:"_id"`
	App       string    `bson:"app"`
	AppNS     string    `bson:"app_ns"`
	Name      string    `bson:"name"`
	NS        string    `bson:"ns"`
	JobName   string    `bson:"job_name"`
	RR        pairDoc   `bson:"rr"`
	Closest   pairDoc   `bson:"closest"`
	CreatedAt time.Time `bson:"created_at"`
	Revision  int64     `bson:"revision"`
	// InstanceSlots is above every instance number the service ever had: its instances
	// are read by key below it (instances.go). Nil in a service written before it
	// existed; Open fills it in.
	InstanceSlots *int64 `bson:"instance_slots,omitempty"`
}

// initialSlots are a new service's instance slots: most services never have more
// instances, so their creates need no write to raise them.
const initialSlots = 4

func toServiceDoc(sv store.Service) serviceDoc {
	return serviceDoc{ID: sv.ID, App: sv.App, AppNS: sv.AppNS, Name: sv.Name, NS: sv.NS, JobName: sv.JobName(),
		RR: toPair(sv.RR), Closest: toPair(sv.Closest), CreatedAt: sv.CreatedAt, Revision: int64(sv.Revision),
		InstanceSlots: new(int64(initialSlots))}
}

func (d serviceDoc) service() (store.Service, error) {
	var p parser
	sv := store.Service{ID: d.ID, App: d.App, AppNS: d.AppNS, Name: d.Name, NS: d.NS,
		RR: p.pair(d.RR), Closest: p.pair(d.Closest), CreatedAt: ms(d.CreatedAt), Revision: uint64(d.Revision)}
	return sv, p.err
}

// instanceID is an instance's _id. The number after the last "/" makes it unique even
// if service IDs contain "/".
func instanceID(serviceID string, number int) string {
	return serviceID + "/" + strconv.Itoa(number)
}

type instanceDoc struct {
	ID          string    `bson:"_id"`
	ServiceID   string    `bson:"service_id"`
	Number      int       `bson:"number"`
	JobName     string    `bson:"job_name"` // for change log entries written on delete
	IP          pairDoc   `bson:"ip"`
	ClusterID   string    `bson:"cluster_id"`
	NamespaceIP pairDoc   `bson:"namespace_ip"`
	HostIP      string    `bson:"host_ip"`
	HostPort    int       `bson:"host_port"`
	Location    *pointDoc `bson:"location,omitempty"`
	Status      string    `bson:"status"`
	UpdatedAt   time.Time `bson:"updated_at"`
	Revision    int64     `bson:"revision"`
	ReportedBy  string    `bson:"reported_by,omitempty"`
	ReportSeq   int64     `bson:"report_seq,omitempty"`
	Standby     *placeDoc `bson:"standby,omitempty"`
	PlacedRev   int64     `bson:"placed_revision,omitempty"`
}

type placeDoc struct {
	ClusterID   string    `bson:"cluster_id"`
	NamespaceIP pairDoc   `bson:"namespace_ip"`
	HostIP      string    `bson:"host_ip"`
	HostPort    int       `bson:"host_port"`
	Location    *pointDoc `bson:"location,omitempty"`
	PlacedRev   int64     `bson:"placed_revision,omitempty"`
}

func toPlaceDoc(p store.Place) *placeDoc {
	d := &placeDoc{ClusterID: p.ClusterID, NamespaceIP: toPair(p.NamespaceIP), HostIP: addrString(p.HostIP), HostPort: p.HostPort, PlacedRev: int64(p.PlacedRevision)}
	if p.Location != nil {
		d.Location = &pointDoc{Lat: p.Location.Lat, Lon: p.Location.Lon}
	}
	return d
}

func (d placeDoc) place(p *parser) store.Place {
	pl := store.Place{ClusterID: d.ClusterID, NamespaceIP: p.pair(d.NamespaceIP), HostIP: p.addr(d.HostIP), HostPort: d.HostPort, PlacedRevision: uint64(d.PlacedRev)}
	if d.Location != nil {
		pl.Location = &geo.Point{Lat: d.Location.Lat, Lon: d.Location.Lon}
	}
	return pl
}

func toInstanceDoc(in store.Instance, jobName string) instanceDoc {
	d := instanceDoc{ID: instanceID(in.ServiceID, in.Number), ServiceID: in.ServiceID, Number: in.Number,
		JobName: jobName, IP: toPair(in.IP), ClusterID: in.ClusterID, NamespaceIP: toPair(in.NamespaceIP),
		HostIP: addrString(in.HostIP), HostPort: in.HostPort, Status: in.Status, UpdatedAt: in.UpdatedAt,
		Revision: int64(in.Revision), ReportedBy: in.ReportedBy, ReportSeq: int64(in.ReportSeq), PlacedRev: int64(in.PlacedRevision)}
	if in.Location != nil {
		d.Location = &pointDoc{Lat: in.Location.Lat, Lon: in.Location.Lon}
	}
	if in.Standby != nil {
		d.Standby = toPlaceDoc(*in.Standby)
	}
	return d
}

func (d instanceDoc) instance() (store.Instance, error) {
	var p parser
	in := store.Instance{ServiceID: d.ServiceID, Number: d.Number, IP: p.pair(d.IP), ClusterID: d.ClusterID,
		NamespaceIP: p.pair(d.NamespaceIP), HostIP: p.addr(d.HostIP), HostPort: d.HostPort, Status: d.Status,
		UpdatedAt: ms(d.UpdatedAt), Revision: uint64(d.Revision), ReportedBy: d.ReportedBy, ReportSeq: uint64(d.ReportSeq),
		PlacedRevision: uint64(d.PlacedRev)}
	if d.Location != nil {
		in.Location = &geo.Point{Lat: d.Location.Lat, Lon: d.Location.Lon}
	}
	if d.Standby != nil {
		sb := d.Standby.place(&p)
		in.Standby = &sb
	}
	return in, p.err
}

type leaseDoc struct {
	Addr       string     `bson:"_id"`
	Role       string     `bson:"role"`
	Owner      string     `bson:"owner"`
	Instance   int        `bson:"instance"`
	CreatedAt  time.Time  `bson:"created_at"`
	ReleasedAt *time.Time `bson:"released_at,omitempty"`
	// Claim identifies the call that inserted the lease, so that call's rollback and a
	// takeover can address exactly this lease and not a later one for the same address.
	Claim primitive.ObjectID `bson:"claim"`
}

func (d leaseDoc) lease() (store.Lease, error) {
	var p parser
	l := store.Lease{Addr: p.addr(d.Addr), Role: d.Role, Owner: d.Owner, Instance: d.Instance, CreatedAt: ms(d.CreatedAt)}
	if d.ReleasedAt != nil {
		l.ReleasedAt = ms(*d.ReleasedAt)
	}
	return l, p.err
}

type subnetDoc struct {
	V4        string    `bson:"_id"` // the masked IPv4 prefix
	V6        string    `bson:"v6"`
	ClusterID string    `bson:"cluster_id"`
	NodeID    string    `bson:"node_id"`
	CreatedAt time.Time `bson:"created_at"`
}

func (d subnetDoc) subnet() (store.Subnet, error) {
	var p parser
	sn := store.Subnet{V4: p.prefix(d.V4), V6: p.prefix(d.V6), ClusterID: d.ClusterID, NodeID: d.NodeID, CreatedAt: ms(d.CreatedAt)}
	return sn, p.err
}

type clusterDoc struct {
	ID        string    `bson:"_id"`
	Name      string    `bson:"name"`
	Address   string    `bson:"address"`
	Port      int       `bson:"port"`
	Location  pointDoc  `bson:"location"`
	RadiusKM  float64   `bson:"radius_km"`
	Reference bool      `bson:"reference"`
	Status    string    `bson:"status"`
	LastSeen  time.Time `bson:"last_seen"`
	CreatedAt time.Time `bson:"created_at"`
}

func toClusterDoc(c store.Cluster) clusterDoc {
	return clusterDoc{ID: c.ID, Name: c.Name, Address: c.Address, Port: c.Port,
		Location: pointDoc{Lat: c.Location.Lat, Lon: c.Location.Lon}, RadiusKM: c.RadiusKM, Reference: c.Reference,
		Status: c.Status, LastSeen: ms(c.LastSeen), CreatedAt: ms(c.CreatedAt)}
}

func (d clusterDoc) cluster() store.Cluster {
	return store.Cluster{ID: d.ID, Name: d.Name, Address: d.Address, Port: d.Port,
		Location: geo.Point{Lat: d.Location.Lat, Lon: d.Location.Lon}, RadiusKM: d.RadiusKM, Reference: d.Reference,
		Status: d.Status, LastSeen: ms(d.LastSeen), CreatedAt: ms(d.CreatedAt)}
}

// interestDoc is keyed by its pair, so adding an interest that exists (every resolve a
// cluster asks for adds one) is a read by key: an upsert filtered on the two fields made
// FerretDB v1 decode every interest inside its write transaction, holding up every
// other write. Documents written before had ObjectID keys; Open rewrites them.
type interestDoc struct {
	ID        string `bson:"_id"`
	ClusterID string `bson:"cluster_id"`
	ServiceID string `bson:"service_id"`
}

// interestID is an interest's _id; the length prefix keeps it unambiguous whatever the
// IDs contain.
func interestID(clusterID, serviceID string) string {
	return strconv.Itoa(len(clusterID)) + ":" + clusterID + "/" + serviceID
}

func toInterestDoc(clusterID, serviceID string) interestDoc {
	return interestDoc{ID: interestID(clusterID, serviceID), ClusterID: clusterID, ServiceID: serviceID}
}

// revID is the _id of a change and of a reservation: the revision as 20 decimal
// digits, so string order is revision order and lookups by _id stay exact string
// matches (FerretDB v1 only pushes {_id: <string>} filters down to its storage;
// everything else is a scan).
func revID(rev uint64) string { return fmt.Sprintf("%020d", rev) }

type changeDoc struct {
	ID        string    `bson:"_id"` // revID(Rev)
	Rev       int64     `bson:"rev"`
	Kind      string    `bson:"kind,omitempty"`
	Op        string    `bson:"op,omitempty"`
	ServiceID string    `bson:"service_id,omitempty"`
	JobName   string    `bson:"job_name,omitempty"`
	Instance  int       `bson:"instance"`
	Object    string    `bson:"object,omitempty"`
	Time      time.Time `bson:"time"`
	// Void marks a revision that was reserved but not used (the write failed); readers
	// skip it.
	Void bool `bson:"void,omitempty"`
	// Abandoned marks a revision a reader passed after its writer was silent for
	// AbandonAfter, written by that reader in the writer's place (the reported change
	// is the reservation's subject, or Void without one). A writer that was only slow
	// finds it when it logs its change, and logs it again under a new revision: readers
	// are past this one.
	Abandoned bool `bson:"abandoned,omitempty"`
}

// reservationDoc records that a writer took a revision (see reserve).
type reservationDoc struct {
	ID string    `bson:"_id"` // revID
	At time.Time `bson:"at"`  // the writer's wall clock
	// Subject is what the revision is for (the change the writer will log, without its
	// time): should the writer die before logging it, readers that pass the abandoned
	// revision report a change of the subject instead, so followers re-read it.
	Subject *changeDoc `bson:"subject,omitempty"`
}

func (d changeDoc) change() store.Change {
	return store.Change{Revision: uint64(d.Rev), Kind: d.Kind, Op: d.Op, ServiceID: d.ServiceID,
		JobName: d.JobName, Instance: d.Instance, Object: d.Object, Time: ms(d.Time)}
}

// Documents in meta.
const (
	metaCompacted = "compacted"     // n: changes up to n were dropped (written under the compaction lock)
	metaHint      = "revision_hint" // n: a recent revision, where a process whose counter fell behind resumes
	// n: the highest revision reserved, raised ($max) by every reservation before its
	// revision is used, so the newest revision is one read of a small collection, not a
	// sorted read of all reservations (which FerretDB serves by decoding every one).
	metaNewest = "newest_revision"
)

type counterDoc struct {
	N int64 `bson:"n"`
}

// lockDoc is a held lock (see lock); ticketDoc a one-shot right (see takeOver, lock).
type lockDoc struct {
	Key   string             `bson:"_id"`
	Token primitive.ObjectID `bson:"token"`
	At    time.Time          `bson:"at"` // wall clock of the holder
}

type ticketDoc struct {
	ID string    `bson:"_id"`
	At time.Time `bson:"at"`
}

type gatewayDoc struct {
	ID             string    `bson:"_id"`
	ClusterID      string    `bson:"cluster_id"`
	PublicV4       string    `bson:"public_v4"`
	PublicV6       string    `bson:"public_v6"`
	InstanceNumber int       `bson:"instance_number"`
	CreatedAt      time.Time `bson:"created_at"`
	UpdatedAt      time.Time `bson:"updated_at"`
	Revision       int64     `bson:"revision"`
}

func toGatewayDoc(g store.Gateway) gatewayDoc {
	return gatewayDoc{ID: g.ID, ClusterID: g.ClusterID, PublicV4: addrString(g.PublicV4), PublicV6: addrString(g.PublicV6),
		InstanceNumber: g.InstanceNumber, CreatedAt: g.CreatedAt, UpdatedAt: g.UpdatedAt, Revision: int64(g.Revision)}
}

func (d gatewayDoc) gateway() (store.Gateway, error) {
	var p parser
	g := store.Gateway{ID: d.ID, ClusterID: d.ClusterID, PublicV4: p.addr(d.PublicV4), PublicV6: p.addr(d.PublicV6),
		InstanceNumber: d.InstanceNumber, CreatedAt: ms(d.CreatedAt), UpdatedAt: ms(d.UpdatedAt), Revision: uint64(d.Revision)}
	return g, p.err
}

type exposureDoc struct {
	ID             string    `bson:"_id"` // "<protocol>-<public_port>": one exposure per public port and protocol
	ServiceID      string    `bson:"service_id"`
	JobName        string    `bson:"job_name"`
	Protocol       string    `bson:"protocol"`
	PublicPort     int       `bson:"public_port"`
	ServicePort    int       `bson:"service_port"`
	Policy         string    `bson:"policy"`
	InstanceNumber int       `bson:"instance_number"`
	Gateway        string    `bson:"gateway"`
	Target         pairDoc   `bson:"target"`
	CreatedAt      time.Time `bson:"created_at"`
	Revision       int64     `bson:"revision"`
}

func toExposureDoc(e store.Exposure) exposureDoc {
	return exposureDoc{ID: e.ID, ServiceID: e.ServiceID, JobName: e.JobName, Protocol: e.Protocol, PublicPort: e.PublicPort,
		ServicePort: e.ServicePort, Policy: e.Policy, InstanceNumber: e.InstanceNumber, Gateway: e.Gateway,
		Target: toPair(e.Target), CreatedAt: e.CreatedAt, Revision: int64(e.Revision)}
}

func (d exposureDoc) exposure() (store.Exposure, error) {
	var p parser
	e := store.Exposure{ID: d.ID, ServiceID: d.ServiceID, JobName: d.JobName, Protocol: d.Protocol, PublicPort: d.PublicPort,
		ServicePort: d.ServicePort, Policy: d.Policy, InstanceNumber: d.InstanceNumber, Gateway: d.Gateway,
		Target: p.pair(d.Target), CreatedAt: ms(d.CreatedAt), Revision: uint64(d.Revision)}
	return e, p.err
}
