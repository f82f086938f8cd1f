{{- define "cairn.labels" -}}
app.kubernetes.io/name: cairn
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- /* Selectors must never change across upgrades: no version in them. Call with (list $ "component"). */ -}}
{{- define "cairn.selectorLabels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: cairn
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "cairn.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- /* The CSI socket as the kubelet sees it on the host. */ -}}
{{- define "cairn.pluginDir" -}}
{{ .Values.kubeletDir }}/plugins/lvm.cairn.dev
{{- end -}}

{{- /*
Where the memory volumes' tmpfs mounts live on the host. Under the kubelet's directory, which the
agent mounts with Bidirectional propagation (the kubelet needs it shared anyway), so the mounts
outlive the agent's container. Not under the plugin directory: the agent also mounts that one
(at /csi) without propagation, and a restarted container would carry a second mount of each
tmpfs there, holding a removed volume's memory until it exits.
*/ -}}
{{- define "cairn.memoryPoolDir" -}}
{{ .Values.kubeletDir }}/plugins/lvm.cairn.dev-memory
{{- end -}}
