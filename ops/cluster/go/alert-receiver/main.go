// Command alert-receiver is the local cluster's Alertmanager webhook receiver: it records what
// Alertmanager delivers, so that a test (or a person) can read it back.
//
//	alert-receiver [-listen :8080] [-keep 100]
//
//	POST /alerts   a webhook notification (JSON); kept in memory, the oldest dropped past -keep
//	GET  /alerts   every notification kept, oldest first: {"received": [{"at": ..., "payload": ...}]}
//	GET  /healthz  "ok"
//
// Each notification is also logged, one line: its status, receiver and alert names.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"sync"
	"time"
)

const maxBody = 1 << 20 // a notification larger than 1 MiB is refused

type received struct {
	At      time.Time       `json:"at"`
	Payload json.RawMessage `json:"payload"`
}

type store struct {
	mu   sync.Mutex
	keep int
	all  []received
}

func (s *store) add(r received) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.all = append(s.all, r)
	if len(s.all) > s.keep {
		s.all = append([]received(nil), s.all[len(s.all)-s.keep:]...)
	}
}

func (s *store) list() []received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]received{}, s.all...)
}

// summary is what the log line says about a notification (Alertmanager's webhook format).
func summary(payload []byte) string {
	var note struct {
		Status   string `json:"status"`
		Receiver string `json:"receiver"`
		Alerts   []struct {
			Labels map[string]string `json:"labels"`
		} `json:"alerts"`
	}
	if err := json.Unmarshal(payload, &note); err != nil {
		return "unreadable: " + err.Error()
	}
	names := make([]string, 0, len(note.Alerts))
	for _, alert := range note.Alerts {
		names = append(names, alert.Labels["alertname"])
	}
	return fmt.Sprintf("%s to %s: %s", note.Status, note.Receiver, strings.Join(names, ","))
}

func (s *store) alerts(w http.ResponseWriter, r *http.Request) {
	switch r.Method {
	case http.MethodPost:
		body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBody))
		if err != nil {
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		if !json.Valid(body) {
			http.Error(w, "the body is not JSON", http.StatusBadRequest)
			return
		}
		s.add(received{At: time.Now().UTC(), Payload: body})
		log.Printf("received %s", summary(body))
		w.WriteHeader(http.StatusOK)
	case http.MethodGet:
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string][]received{"received": s.list()})
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "GET or POST", http.StatusMethodNotAllowed)
	}
}

func main() {
	listen := flag.String("listen", ":8080", "address to listen on")
	keep := flag.Int("keep", 100, "how many notifications to keep (the oldest are dropped)")
	flag.Parse()
	if *keep < 1 {
		log.Fatal("-keep must be at least 1")
	}
	s := &store{keep: *keep}
	http.HandleFunc("/alerts", s.alerts)
	http.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	log.Printf("alert-receiver listening on %s, keeping the last %d notifications", *listen, *keep)
	server := &http.Server{Addr: *listen, ReadHeaderTimeout: 10 * time.Second}
	log.Fatal(server.ListenAndServe())
}
