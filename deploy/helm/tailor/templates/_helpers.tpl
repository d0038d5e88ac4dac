{{/*
Shared definitions of the Tailor chart. Every per-service template loops over
`include "tailor.enabledServices"` and reads one service's values with `include "tailor.service"`,
which deep-merges services.<name> over the `default:` block.
*/}}

{{/* The gRPC port every service container listens on (TAILOR_GRPC_PORT). */}}
{{- define "tailor.grpcPort" -}}50051{{- end -}}

{{- define "tailor.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tailor.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tailor.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of a per-service resource: (dict "root" $ "name" "consent") */}}
{{- define "tailor.serviceFullname" -}}
{{- printf "%s-%s" (include "tailor.fullname" .root) .name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels: (dict "root" $ "component" "consent") */}}
{{- define "tailor.labels" -}}
helm.sh/chart: {{ include "tailor.chart" .root }}
{{ include "tailor.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tailor
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Selector labels: (dict "root" $ "component" "consent") */}}
{{- define "tailor.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tailor.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end -}}

{{/* Names of the enabled services, alphabetical, as a JSON list (use with fromJsonArray). */}}
{{- define "tailor.enabledServices" -}}
{{- $enabled := list -}}
{{- range $name := keys .Values.services | sortAlpha -}}
{{- if (index $.Values.services $name).enabled -}}
{{- $enabled = append $enabled $name -}}
{{- end -}}
{{- end -}}
{{- toJson $enabled -}}
{{- end -}}

{{/*
Deep merge of src into dst, in place: maps merge key by key, any other value of src (including
false, 0, "" and lists) replaces dst's. Unlike sprig's mergeOverwrite, a service can turn off
what `default:` turns on. Argument: (list dst src)
*/}}
{{- define "tailor.deepMerge" -}}
{{- $dst := index . 0 -}}
{{- $src := index . 1 -}}
{{- range $key, $value := $src -}}
{{- if and (kindIs "map" $value) (kindIs "map" (get $dst $key)) -}}
{{- include "tailor.deepMerge" (list (get $dst $key) $value) -}}
{{- else -}}
{{- $_ := set $dst $key $value -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
One service's effective values as YAML (use with fromYaml): `default:` deep-merged with
services.<name>, plus the keys `name`, `fullname` and `imageRef`. Fails with a clear message when
the database URL or Secret is missing (values.schema.json rejects that too).
Argument: (dict "root" $ "name" "consent")
*/}}
{{- define "tailor.service" -}}
{{- $root := .root -}}
{{- $name := .name -}}
{{- $svc := deepCopy $root.Values.default -}}
{{- include "tailor.deepMerge" (list $svc (index $root.Values.services $name)) -}}
{{- $db := $svc.database | default dict -}}
{{- if and $svc.enabled (not $db.url) (not $db.existingSecret) -}}
{{- fail (printf "services.%s.database: set url or existingSecret (a Secret holding TAILOR_%s_DATABASE_URL)" $name (upper $name)) -}}
{{- end -}}
{{- $_ := set $svc "name" $name -}}
{{- $_ = set $svc "fullname" (include "tailor.serviceFullname" (dict "root" $root "name" $name)) -}}
{{- $_ = set $svc "imageRef" (include "tailor.image" (dict "root" $root "name" $name "image" $svc.image)) -}}
{{- toYaml $svc -}}
{{- end -}}

{{/*
Image reference: repository ("{service}" replaced by the service name), tag defaulting to the
chart's appVersion, and the digest when one is set. Argument: (dict "root" $ "name" "consent" "image" $image)
*/}}
{{- define "tailor.image" -}}
{{- $repository := replace "{service}" .name .image.repository -}}
{{- $tag := .image.tag | default .root.Chart.AppVersion | toString -}}
{{- if .image.digest -}}
{{- printf "%s:%s@%s" $repository $tag .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Name of the chart-managed Secret holding a service's database URL. */}}
{{- define "tailor.databaseSecretName" -}}
{{- printf "%s-database" (include "tailor.serviceFullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the chart-managed Secret holding the NATS URL. */}}
{{- define "tailor.natsSecretName" -}}
{{- printf "%s-nats" (include "tailor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Name of the hook-only Secret, ServiceAccount and NetworkPolicy. */}}
{{- define "tailor.hooksName" -}}
{{- printf "%s-hooks" (include "tailor.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
TAILOR_NATS_URL from a Secret. A `url` value is rendered into a chart Secret (the hook Secret
for hook jobs, which run before the release's own Secrets exist); otherwise existingSecret.
Argument: (dict "root" $ "hook" true|false)
*/}}
{{- define "tailor.natsEnv" -}}
{{- $nats := .root.Values.nats -}}
- name: TAILOR_NATS_URL
  valueFrom:
    secretKeyRef:
{{- if and $nats.url .hook }}
      name: {{ include "tailor.hooksName" .root }}
      key: nats-url
{{- else if $nats.url }}
      name: {{ include "tailor.natsSecretName" .root }}
      key: url
{{- else }}
      name: {{ $nats.existingSecret }}
      key: {{ $nats.existingSecretKey }}
{{- end }}
{{- end -}}

{{/*
TAILOR_<SERVICE>_DATABASE_URL from a Secret, like tailor.natsEnv.
Argument: (dict "root" $ "svc" $svc "hook" true|false)
*/}}
{{- define "tailor.databaseEnv" -}}
{{- $db := .svc.database -}}
- name: TAILOR_{{ upper .svc.name }}_DATABASE_URL
  valueFrom:
    secretKeyRef:
{{- if and $db.url .hook }}
      name: {{ include "tailor.hooksName" .root }}
      key: {{ .svc.name }}-database-url
{{- else if $db.url }}
      name: {{ include "tailor.databaseSecretName" (dict "root" .root "name" .svc.name) }}
      key: url
{{- else }}
      name: {{ $db.existingSecret }}
      key: {{ $db.existingSecretKey }}
{{- end }}
{{- end -}}

{{/* Logging and telemetry environment of hook jobs (services read it from their ConfigMap). */}}
{{- define "tailor.hookEnv" -}}
- name: TAILOR_LOG_LEVEL
  value: {{ .svc.logLevel | quote }}
- name: TAILOR_LOG_FORMAT
  value: {{ .svc.logFormat | quote }}
- name: TAILOR_OTLP_ENDPOINT
  value: {{ .root.Values.telemetry.otlpEndpoint | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ printf "%s%s" .root.Values.telemetry.serviceNamePrefix .job | quote }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ include "tailor.resourceAttributes" (dict "root" .root "attributes" dict) | quote }}
{{- end -}}

{{/*
OTEL_RESOURCE_ATTRIBUTES: chart-level attributes, then the service's, then the ones the chart
knows (namespace, version), as sorted key=value pairs. Argument: (dict "root" $ "attributes" map)
*/}}
{{- define "tailor.resourceAttributes" -}}
{{- $attributes := dict "service.namespace" "tailor" "k8s.namespace.name" .root.Release.Namespace "service.version" (.root.Chart.AppVersion | toString) -}}
{{- include "tailor.deepMerge" (list $attributes .root.Values.telemetry.resourceAttributes) -}}
{{- include "tailor.deepMerge" (list $attributes .attributes) -}}
{{- $pairs := list -}}
{{- range $key := keys $attributes | sortAlpha -}}
{{- $pairs = append $pairs (printf "%s=%v" $key (index $attributes $key)) -}}
{{- end -}}
{{- join "," $pairs -}}
{{- end -}}

{{/* The writable /tmp volume (the root filesystem is read-only). Argument: $svc */}}
{{- define "tailor.tmpVolume" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .tmpSizeLimit }}
{{- end -}}

{{- define "tailor.tmpVolumeMount" -}}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{/* Egress to DNS, PostgreSQL, NATS and the OTLP endpoint. Argument: (dict "root" $ "postgresql" bool) */}}
{{- define "tailor.infraEgress" -}}
{{- $egress := .root.Values.networkPolicy.egress -}}
{{- $kinds := list "dns" "nats" -}}
{{- if .postgresql }}{{ $kinds = append $kinds "postgresql" }}{{ end -}}
{{- if .root.Values.telemetry.otlpEndpoint }}{{ $kinds = append $kinds "otlp" }}{{ end -}}
{{- range $kind := $kinds }}
{{- $rule := index $egress $kind }}
# {{ $kind }}
- ports:
    {{- toYaml $rule.ports | nindent 4 }}
  {{- with $rule.to }}
  to:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}
{{- end -}}

{{/*
ConfigMap data of a service (also hashed into the pod annotations). Argument: (dict "root" $ "svc" $svc)
TAILOR_NATS_REPLICAS: every service brings the streams to its own settings when it starts
(ensure_streams), so it must hold the same replica count as the streams job.
*/}}
{{- define "tailor.configData" -}}
{{- $svc := .svc -}}
{{- $telemetry := $svc.telemetry | default dict -}}
{{- $data := dict
  "TAILOR_GRPC_PORT" (include "tailor.grpcPort" .)
  "TAILOR_NATS_REPLICAS" (toString .root.Values.streams.replicas)
  "TAILOR_LOG_LEVEL" $svc.logLevel
  "TAILOR_LOG_FORMAT" $svc.logFormat
  "TAILOR_OTLP_ENDPOINT" .root.Values.telemetry.otlpEndpoint
  "OTEL_SERVICE_NAME" ($telemetry.serviceName | default (printf "%s%s" .root.Values.telemetry.serviceNamePrefix $svc.name))
  "OTEL_RESOURCE_ATTRIBUTES" (include "tailor.resourceAttributes" (dict "root" .root "attributes" ($telemetry.resourceAttributes | default dict)))
-}}
{{- /* Where each service it calls is reached: TAILOR_<CALLEE>_ADDRESS=host:port. */ -}}
{{- range $callee := $svc.calls | default list -}}
{{- $calleeService := include "tailor.service" (dict "root" $.root "name" $callee) | fromYaml -}}
{{- $_ := set $data (printf "TAILOR_%s_ADDRESS" (upper $callee)) (printf "%s:%v" $calleeService.fullname $calleeService.service.port) -}}
{{- end -}}
{{- range $key, $value := $svc.env -}}
{{- /* Probes, the Service and the NetworkPolicies all use the one container port. */ -}}
{{- if has $key (list "TAILOR_GRPC_PORT" (printf "TAILOR_%s_GRPC_PORT" (upper $svc.name))) -}}
{{- fail (printf "services.%s.env.%s: the container always listens on %s (probes, Service and NetworkPolicies use it); set services.%s.service.port for another Service port" $svc.name $key (include "tailor.grpcPort" $) $svc.name) -}}
{{- end -}}
{{- $_ := set $data $key (toString $value) -}}
{{- end -}}
{{- range $key := keys $data | sortAlpha }}
{{ $key }}: {{ index $data $key | quote }}
{{- end -}}
{{- end -}}
