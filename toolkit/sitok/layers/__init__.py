"""sitok.layers"""
